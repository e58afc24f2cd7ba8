"""Real data: image folders and the masks beside them (`folders`), masks -> boxes
(`masks`), class vocabularies (`vocab`), and adapters from published defect sets to
an imported, versioned real set (`adapters`, into the in-memory `realset.RealSet` and
out as a YOLO tree or registry version). Import the module you need: this
package file stays empty so that listing a folder does not load scipy or Pillow's
plugins for the importers."""
