"""`kind: pdig`: Stable Diffusion + SCE tokens + LISA image adapter + TIDSC box
guidance (the PDIG paper, ../shared/seeds/000_2ed675ca076d4962.txt), on diffusers
and open_clip. Modules: base_model (loading / tiny random bases), sce, lisa,
tidsc, pipeline (PDIGPipeline), adapter (trained-parts checkpoint), generator,
data (training examples), train (SCE + LISA under Ray Train) and cli
(`factory train pdig`, `factory train pdig-tiny-base`)."""

from factory.generators.pdig.generator import PDIGGenerator

FAMILY = PDIGGenerator  # what `factory.generators.base` registers as kind "pdig" (this folder)

__all__ = ["FAMILY", "PDIGGenerator"]
