"""The project's exception types. Each message is one line naming the file, row,
field or key at fault and what was expected, so a user can fix input without a
traceback."""


class PipelineError(Exception):
    """Base class: anything the user can fix by changing input or configuration."""


class ConfigError(PipelineError):
    """A configuration key, value or command-line argument is invalid."""


class DataError(PipelineError):
    """An input file (documents, QA examples) is missing or malformed."""


class IndexFormatError(PipelineError):
    """An index directory is missing, incomplete or inconsistent with its manifest."""


class RetrievalError(PipelineError):
    """A retrieval call cannot be served (missing group, dead shard, bad query)."""


class ModelLoadError(PipelineError):
    """A model or tokenizer cannot be found or does not fit the index."""


def unwrap_pipeline_error(error: BaseException) -> BaseException:
    """The PipelineError raised inside a Ray task or actor, if any (Ray wraps user exceptions); else `error`."""
    seen = error
    while seen is not None:
        if isinstance(seen, PipelineError):
            return type(seen)(str(seen))
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return error


def run_job(main) -> None:
    """Run a job's `main() -> int` and exit with its code; a PipelineError becomes one `error:` line and exit 2."""
    import sys

    try:
        code = main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
