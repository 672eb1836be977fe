"""CSI failures as gRPC status codes, and the mapping from dfs errno values."""

import errno
import functools

import grpc

from dfs.errors import DfsError


class CsiError(Exception):
    """An RPC failed with a gRPC status code the CSI spec prescribes."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.NOT_FOUND, message)


def already_exists(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.ALREADY_EXISTS, message)


def precondition(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.FAILED_PRECONDITION, message)


def out_of_range(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.OUT_OF_RANGE, message)


def aborted(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.ABORTED, message)


# Errno values that mean "the cluster is not answering right now": the CO
# retries UNAVAILABLE with back-off, which is what these need.
_UNAVAILABLE = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.ESHUTDOWN,
                errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EAGAIN,
                # The metaserver serves another cluster's database until it is
                # restored: nothing may be done there, and retrying is right.
                errno.EREMCHG}

_CODES = {
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.EEXIST: grpc.StatusCode.ALREADY_EXISTS,
    errno.EINVAL: grpc.StatusCode.INVALID_ARGUMENT,
    errno.ENAMETOOLONG: grpc.StatusCode.INVALID_ARGUMENT,
    errno.EDQUOT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.ENOSPC: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
    errno.ENOTEMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    errno.ENOSYS: grpc.StatusCode.UNIMPLEMENTED,
}


def from_dfs(exc: DfsError, doing: str) -> CsiError:
    if exc.errno in _UNAVAILABLE:
        code = grpc.StatusCode.UNAVAILABLE
    else:
        code = _CODES.get(exc.errno, grpc.StatusCode.INTERNAL)
    return CsiError(code, f"{doing}: {exc}")


def grpc_method(log):
    """Decorate a servicer method so every failure reaches the CO as a status code.

    CsiError carries its own code, DfsError is mapped from its errno, and any
    other exception is logged with its traceback and answered INTERNAL, so a
    bug fails one call and the plugin keeps serving.
    """
    def wrap(method):
        @functools.wraps(method)
        def handler(self, request, context):
            try:
                return method(self, request, context)
            except CsiError as exc:
                log.info("request refused", rpc=method.__name__, code=exc.code.name,
                         reason=exc.message)
                context.abort(exc.code, exc.message)
            except DfsError as exc:
                failure = from_dfs(exc, method.__name__)
                log.warning("request failed", rpc=method.__name__, code=failure.code.name,
                            reason=failure.message)
                context.abort(failure.code, failure.message)
            except Exception:
                log.error("request crashed", exc_info=True, rpc=method.__name__)
                context.abort(grpc.StatusCode.INTERNAL,
                              f"{method.__name__}: internal error in dfs-csi (see its log)")
        return handler
    return wrap
