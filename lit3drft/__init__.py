"""lit3drft: reinforcement fine-tuning of video 3D scene-understanding MLLMs (3D-RFT) on Lightning."""

__version__ = "0.1.0"
