"""The named exceptions of the model library.

Every bad input (image, prompt, checkpoint) raises one of these with a message that says what was wrong
and what was expected, instead of an ``assert`` or a shape error deep inside torch.
"""


class LiteSamError(Exception):
    """Base class of every error raised on purpose by ``litesam``."""


class InvalidImageError(LiteSamError, ValueError):
    """The image is not an H×W×3 uint8 RGB array of a supported size."""


class InvalidPromptError(LiteSamError, ValueError):
    """Points, labels, boxes or mask inputs are malformed, empty, non-finite or outside the image."""


class InvalidMaskError(LiteSamError, ValueError):
    """A mask, an encoded mask (COCO or brush RLE), a box array or an NMS argument is malformed."""


class CheckpointError(LiteSamError):
    """A checkpoint cannot be read, is of another variant, or its keys do not match the model."""


class DatasetError(LiteSamError, ValueError):
    """An annotation file or image is missing, unreadable or inconsistent; the message says which."""


class NoEmbeddingError(LiteSamError, RuntimeError):
    """``predict`` was called before ``set_image`` or ``set_embedding``."""


class NoProposalHeadError(LiteSamError, ValueError):
    """AutoPPN proposals were asked of a model without an AutoPPN head (an engine's official weights)."""
