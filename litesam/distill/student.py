"""The student: a Lite-SAM variant whose prompt encoder and mask decoder are the teacher's.

MobileSAM's decoupled distillation keeps the teacher's prompt encoder and mask decoder and trains only a new
image encoder to reproduce the teacher's embedding, so the copied decoder reads the student's embedding as it
read the teacher's. The prompt encoder's weights do not depend on the input size (its Fourier features work
in normalised coordinates, its mask path is convolutional), so a 1024 teacher's modules load into a 640
student unchanged; the two need the same embedding channels and decoder layout.
"""

from __future__ import annotations

import torch

from ..build import build_model
from ..variants import get_variant
from ..errors import CheckpointError
from ..modeling.lite_sam import LiteSAM


def check_student_fits(student_variant: str, teacher: LiteSAM) -> None:
    """Raise a clear error unless ``student_variant`` is a Lite-SAM variant with the teacher's embed_dim.

    Raises:
        CheckpointError: unknown variant, an engine as student, or another embedding width.
    """
    student = get_variant(student_variant)
    if student.is_engine:
        raise CheckpointError(
            f"the student must be a Lite-SAM variant (litesam_r640, litesam_r1024, …), not the engine {student_variant}"
        )
    width = teacher.prompt_encoder.embed_dim
    if student.embed_dim != width:
        raise CheckpointError(
            f"student {student_variant} has a {student.embed_dim}-channel embedding but the teacher "
            f"({teacher.variant}) has {width}: its prompt encoder and mask decoder cannot be copied; choose a "
            f"student with embed_dim {width} (256: litesam_r640, litesam_r1024; 64: litesam_tiny_student)"
        )


def build_student(student_variant: str, teacher: LiteSAM, seed: int = 0) -> LiteSAM:
    """A new student with a random image encoder (seeded) and copies of the teacher's prompt encoder and mask
    decoder, in train mode on the CPU.

    Raises:
        CheckpointError: see :func:`check_student_fits`; or a decoder layout (depth, heads, MLP, IoU head, mask
            channels) other than the teacher's, with the mismatched keys named.
    """
    check_student_fits(student_variant, teacher)
    torch.manual_seed(seed)
    student = build_model(student_variant).train()
    for name in ("prompt_encoder", "mask_decoder"):
        source = {k: v.detach().cpu().clone() for k, v in getattr(teacher, name).state_dict().items()}
        target = getattr(student, name)
        expected = target.state_dict()
        wrong = sorted(k for k in expected if k not in source or source[k].shape != expected[k].shape)
        extra = sorted(k for k in source if k not in expected)
        if wrong or extra:
            raise CheckpointError(
                f"the teacher's {name} ({teacher.variant}) does not fit student {student_variant}: "
                f"mismatched or missing {wrong[:5]}, unexpected {extra[:5]}; the student variant needs the "
                "teacher's decoder layout"
            )
        target.load_state_dict(source, strict=True)
    return student
