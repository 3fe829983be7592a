"""The project's exception types. Each message is one line naming the file, row,
field or key at fault and what was expected, so a user can fix input without a
traceback."""

import re


class PipelineError(Exception):
    """Base class: anything the user can fix by changing input or configuration."""


class ConfigError(PipelineError):
    """A configuration key, value or command-line argument is invalid."""


class DataError(PipelineError):
    """An input file (documents, QA examples) is missing or malformed."""


class IndexFormatError(PipelineError):
    """An index directory is missing, incomplete or inconsistent with its manifest."""


class StorageError(PipelineError):
    """A file the project writes or reads cannot be (full disk, no permission, read-only file system, damage)."""


class RetrievalError(PipelineError):
    """A retrieval call cannot be served (missing group, dead shard, bad query)."""


class ClusterError(PipelineError):
    """No Ray cluster to run on where one is needed, or one that cannot be reached."""


class ModelLoadError(PipelineError):
    """A model or tokenizer cannot be found or does not fit the index."""


def unwrap_pipeline_error(error: BaseException) -> BaseException:
    """The PipelineError raised inside a Ray task, actor or Ray Train worker, if any (Ray wraps user exceptions:
    a task's `cause`, a Train run's `worker_failures` by rank); else `error`."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, PipelineError):
            return type(current)(str(current))
        raised_in_constructor = _constructor_error(current)
        if raised_in_constructor is not None:
            return raised_in_constructor
        cause = getattr(current, "cause", None)
        pending.append(cause if isinstance(cause, BaseException) else current.__cause__)
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict):
            pending.extend(failures[rank] for rank in sorted(failures))
    return error


# Ray's ActorDiedError for an actor whose constructor raised keeps only the text of that error (its traceback,
# ending in the exception's "module.Class: message" line), not the exception object.
_CONSTRUCTOR_ERROR = re.compile(r"^pipeline\.errors\.(\w+): (.+)$", re.MULTILINE)


def _constructor_error(error: BaseException) -> PipelineError | None:
    """The PipelineError an actor's constructor raised, rebuilt from the text of Ray's ActorDiedError; else None."""
    if not getattr(error, "actor_init_failed", False):
        return None
    found = _CONSTRUCTOR_ERROR.findall(str(error))
    kind = globals().get(found[-1][0]) if found else None
    if isinstance(kind, type) and issubclass(kind, PipelineError):
        return kind(found[-1][1].strip())
    return None


def run_job(main) -> None:
    """Run a job's `main() -> int` and exit with its code; a PipelineError, also one raised in a Ray worker,
    becomes one `error:` line on stderr and exit code 2."""
    import sys

    try:
        code = main()
    except Exception as e:  # noqa: BLE001  (anything that is not a PipelineError is re-raised as it was)
        error = unwrap_pipeline_error(e)
        if not isinstance(error, PipelineError):
            raise
        print(f"error: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)
