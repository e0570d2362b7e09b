"""The one error type of the contract: a file that is not what the contract says it is."""

from __future__ import annotations


class ContractError(ValueError):
    """A contract file (tarball, manifest, marker, run.json) is missing, unreadable or wrong. The message is one
    line that names the file and what is wrong with it; each side adds what to do."""
