"""The ``convlens`` command line.

Each module in this package holds one family of commands and a ``register(app)`` function;
they are discovered here, so adding a command never touches a shared list. A
:class:`~convlens.errors.ConvlensError` ends the process with its one-line message and exit
status 2, never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import pkgutil
import sys

from convlens.cli.app import app
from convlens.errors import ConvlensError

_SKIP = {"app", "checks", "common"}


def _register_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name in _SKIP:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def os_error_line(e: OSError) -> str:
    """A system error as one line: what failed, on which file, and what was kept."""
    where = f" {e.filename!s}" if e.filename else ""
    what = e.strerror or str(e) or type(e).__name__
    line = f"error: {what}{where}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        line += " (nothing was half-written; earlier outputs are unchanged)"
    return line


def usage_error_line(e: Exception) -> str:
    """Click's usage error as one line, pointing at the command's --help."""
    ctx = getattr(e, "ctx", None)
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    message = " ".join(str(e.format_message()).split())  # type: ignore[attr-defined]
    return f"error: {message}{where}"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input or a system error such as a
    full disk, 130 interrupted)."""
    try:
        app(args=argv, standalone_mode=False)
    except ConvlensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(os_error_line(e), file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; try smaller inputs or batches", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:
        # Usage errors from click (which Typer may vendor): one line, like every other error;
        # only a bare command (no arguments at all) shows its help.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            if type(e).__name__ == "NoArgsIsHelpError" or not hasattr(e, "format_message"):
                e.show()  # type: ignore[attr-defined]
            else:
                print(usage_error_line(e), file=sys.stderr)
            return int(e.exit_code)  # type: ignore[attr-defined]
        if type(e).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
