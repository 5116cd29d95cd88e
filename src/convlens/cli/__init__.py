"""The ``convlens`` command line.

Each module in this package holds one family of commands and a ``register(app)`` function;
they are discovered here, so adding a command never touches a shared list. A
:class:`~convlens.errors.ConvlensError` ends the process with its one-line message and exit
status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from convlens.cli.app import app
from convlens.errors import ConvlensError

_SKIP = {"app", "common"}


def _register_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name in _SKIP:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 interrupted, 2 bad input)."""
    try:
        app(args=argv, standalone_mode=False)
    except ConvlensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:
        # Usage errors from click (which Typer may vendor): show them the way click does.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()  # type: ignore[attr-defined]
            return int(e.exit_code)  # type: ignore[attr-defined]
        if type(e).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
