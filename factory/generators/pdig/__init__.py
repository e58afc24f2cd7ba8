"""`kind: pdig`: Stable Diffusion + SCE tokens + LISA image adapter + TIDSC box
guidance (the PDIG paper, ../shared/seeds/000_2ed675ca076d4962.txt), on diffusers
and open_clip. Modules: base_model (loading / tiny random bases), sce, lisa,
tidsc, pipeline (PDIGPipeline), adapter (trained-parts checkpoint), generator."""

from factory.generators.pdig.generator import PDIGGenerator

__all__ = ["PDIGGenerator"]
