"""The grid a lens lives on, without torch: fields of view, redshifts, and :class:`Geometry`.

Every default field of view and redshift of the packages comes from here (Table 1: 128 pixels of
0.06" make the 7.69" image; the source plane is 3" wide; z_l = 0.5, z_s = 1.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lenssim._checks import check_positive, check_size

__all__ = ["FOV_TOLERANCE", "IMAGE_FOV", "SOURCE_FOV", "Z_LENS", "Z_SOURCE", "Geometry", "same_fov"]

IMAGE_FOV = 7.69
"""Width of the image plane, arcsec (Table 1)."""
SOURCE_FOV = 3.0
"""Width of the source plane, arcsec (Table 1)."""
Z_LENS = 0.5
"""Lens redshift (Table 1)."""
Z_SOURCE = 1.5
"""Source redshift (Table 1)."""
FOV_TOLERANCE = 1e-6
"""Relative difference below which two fields of view are the same: every geometry comparison of
the packages uses it (through :func:`same_fov` or :meth:`Geometry.refuse_other`)."""


def same_fov(a: float, b: float) -> bool:
    """Whether fields of view ``a`` and ``b`` (arcsec) agree to :data:`FOV_TOLERANCE` of ``b``."""
    return abs(float(a) - float(b)) <= FOV_TOLERANCE * abs(float(b))


@dataclass(frozen=True)
class Geometry:
    """``pixels`` across square image (kappa) and source maps spanning ``image_fov`` and
    ``source_fov`` arcsec. A model has learned one geometry; :meth:`refuse_other` turns data on
    another into a one-line error."""

    pixels: int
    """Pixels across the image (and kappa) and source maps."""
    image_fov: float = IMAGE_FOV
    """Width of the image plane, arcsec (Table 1: 7.69)."""
    source_fov: float = SOURCE_FOV
    """Width of the source plane, arcsec (Table 1: 3); at most ``image_fov``."""

    def __post_init__(self) -> None:
        check_size("pixels", self.pixels)
        for name in ("image_fov", "source_fov"):  # arcsec
            check_positive(name, getattr(self, name))
        if self.source_fov > self.image_fov:
            raise ValueError(f"source_fov ({self.source_fov:g}) must not exceed image_fov ({self.image_fov:g})")

    @property
    def pixel_scale(self) -> float:
        """Arcsec per image pixel."""
        return self.image_fov / self.pixels

    def refuse_other(
        self,
        where: str,
        *,
        pixels: int | None = None,
        image_fov: float | None = None,
        source_fov: float | None = None,
        whose: str = "the model's",
        hint: str = "",
        error: Callable[[str], Exception] = ValueError,
    ) -> None:
        """Raise ``error`` (one line naming ``where``, then ``hint``) when a given value differs
        from this geometry (``whose`` it is: "the RIM's", "the training lenses'"; fields of view
        compared by :func:`same_fov`); ``None`` is not checked."""
        if pixels is not None and int(pixels) != self.pixels:
            raise error(f"{where}: maps are {int(pixels)} pixels wide, {whose} are {self.pixels}{hint}")
        for name, value in (("image_fov", image_fov), ("source_fov", source_fov)):
            ours = getattr(self, name)
            if value is not None and not same_fov(value, ours):
                raise error(f"{where}: {name} {float(value):g} differs from {whose} {ours:g} arcsec{hint}")
