"""Imports every domain's models so `Base.metadata` is complete (for Alembic and tests)."""

from omnijourney.access import models as _access  # noqa: F401
from omnijourney.analytics import models as _analytics  # noqa: F401
from omnijourney.commerce import models as _commerce  # noqa: F401
from omnijourney.engage import models as _engage  # noqa: F401
from omnijourney.identity import models as _identity  # noqa: F401
from omnijourney.ingest import models as _ingest  # noqa: F401
from omnijourney.pipeline import models as _pipeline  # noqa: F401
from omnijourney.profiles import models as _profiles  # noqa: F401
from omnijourney.service import models as _service  # noqa: F401
from omnijourney.store.base import Base
from omnijourney.web import models as _web  # noqa: F401

metadata = Base.metadata
