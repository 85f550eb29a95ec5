"""One line for every bad command line, exit code 2.

Hydra answers an unknown key, a wrong type or a missing config option with a report of several
lines (and advice that does not apply to a typed schema). `run_with_one_line_errors` has Hydra
raise those instead (its own HYDRA_FULL_ERROR switch, on only while the config is composed) and
prints one line naming the field, the value and what is wrong. A user who sets HYDRA_FULL_ERROR
gets Hydra's full report as usual.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Callable

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

_FLAG = "HYDRA_FULL_ERROR"
_MARK = "TINYINDUCT_SET_HYDRA_FULL_ERROR"  # inherited by launcher workers, like the flag


def describe(err: Exception) -> str:
    """The one line for a Hydra or OmegaConf error."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, MissingConfigException):
        options = f"; available: {', '.join(err.options)}" if err.options else ""
        return first.removeprefix("In 'train': ") + options
    if isinstance(err, OverrideParseException):
        return f"cannot parse override {err.override!r}: {first}"
    group = re.match(r"Could not override '([\w/.]+)'\. No match in the defaults list", first)
    if group:  # a group the defaults list does not hold (experiment/): it is added with +
        given = next((a for a in sys.argv[1:] if a.startswith(f"{group[1]}=")), None)
        return f"{first} Add it with a +: {'+' + given if given else '+' + group[1] + '=...'}"
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        msg = (cause.msg or first).strip().splitlines()[0]
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            known = ""
            if dataclasses.is_dataclass(cause.object_type):
                names = ", ".join(f.name for f in dataclasses.fields(cause.object_type))
                known = f"; known keys there: {names}"
            return f"unknown config key {cause.full_key}{known}"
        return f"invalid config: {cause.full_key}: {msg}"
    return first


def config_composed() -> None:
    """Call first in the task function: from here on Hydra reports errors its usual way."""
    if os.environ.pop(_MARK, None):
        os.environ.pop(_FLAG, None)


def run_with_one_line_errors(main: Callable[[], object]) -> None:
    set_here = _FLAG not in os.environ
    if set_here:
        os.environ[_FLAG] = os.environ[_MARK] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:
        if not set_here:
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        sys.exit(2)
