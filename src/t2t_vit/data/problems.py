"""Bad inputs a dense dataset leaves out, by kind: counted, named in one warning per kind, and kept on the dataset
(`dataset.problems.counts`) so that a run can report them."""

import logging
from typing import Dict, List

_logger = logging.getLogger(__name__)


class Problems:
    """The names of the skipped inputs (images, masks, annotations) of one source, by kind of problem."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: Dict[str, List[str]] = {}

    def add(self, kind: str, name: str) -> None:
        self.names.setdefault(kind, []).append(name)

    @property
    def counts(self) -> Dict[str, int]:
        """Kind of problem -> how many inputs had it."""
        return {kind: len(names) for kind, names in self.names.items()}

    def log(self, shown: int = 5) -> None:
        """One warning per kind of problem, naming its first `shown` inputs."""
        for kind, names in self.names.items():
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            _logger.warning("%s: %d %s: %s%s", self.source, len(names), kind, ", ".join(names[:shown]), more)
