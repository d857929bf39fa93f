"""Shape-annotated array types for hints such as ``Float[Tensor, "tokens d_model"]`` (jaxtyping).

jaxtyping (with beartype) is a dev-only dependency: the test suite installs jaxtyping's import hook on
:mod:`personaspace.engine` (tests/conftest.py), which makes every shape hint there a checked contract.
Outside the tests nothing here imports jaxtyping -- it is used only when something has already imported
it -- so ``import personaspace`` neither needs it nor pays for it, and the hints (never evaluated under
``from __future__ import annotations``) stay documentation. Should something evaluate them without
jaxtyping, ``Float[Tensor, "..."]`` is plain ``Tensor``.

A one-word dimension is written with a leading space (``Int[Tensor, " tokens"]``) so that linters do not
read it as a forward reference to a name.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

__all__ = ["Bool", "Float", "Int"]

if TYPE_CHECKING or "jaxtyping" in sys.modules:
    from jaxtyping import Bool, Float, Int
else:

    class _Shaped:
        """``Float[Tensor, "dims"]`` -> ``Tensor``: the array type, without the shape check."""

        def __class_getitem__(cls, item: Any) -> Any:
            return item[0] if isinstance(item, tuple) else item

    class Bool(_Shaped):
        pass

    class Float(_Shaped):
        pass

    class Int(_Shaped):
        pass
