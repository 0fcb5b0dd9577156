#!/usr/bin/env python3
"""A PostgreSQL 18 libpq client for gprxy's OAUTHBEARER, through ctypes (no compiler, no psycopg).

Reads one JSON object on stdin (the token stays off the command line):
  {"libpq": "<path to libpq.so.5>", "conninfo": "...", "token": "<bearer token>" | null, "query": "<SQL>"}
and prints one JSON object on stdout:
  {"libpq_version": 180004, "connected": bool, "hook_calls": [...], "cleanups": n, "ssl": bool,
   "row": [...] | null, "error": {"severity", "sqlstate", "message"} | null, "error_text": "..."}

The token comes from an application hook (PQsetAuthDataHook, PQAUTHDATA_OAUTH_BEARER_TOKEN), the way psql 18
gets one from libpq-oauth's device flow; libpq itself runs the SASL exchange: the discovery round (an empty
`auth=`), then a second connection with `auth=Bearer <token>`. With "token": null the hook leaves the request to
PQdefaultAuthDataHook, as psql 18 does without libpq-oauth.
"""

import ctypes
import json
import re
import select
import sys

# libpq-fe.h (PostgreSQL 18), "OAuth Support" in the libpq chapter.
PQAUTHDATA_PROMPT_OAUTH_DEVICE = 0
PQAUTHDATA_OAUTH_BEARER_TOKEN = 1

# PostgresPollingStatusType
PGRES_POLLING_FAILED, PGRES_POLLING_READING, PGRES_POLLING_WRITING, PGRES_POLLING_OK = 0, 1, 2, 3
CONNECTION_OK = 0
PGRES_TUPLES_OK = 2
PQERRORS_VERBOSE = 2  # connection errors then read "FATAL:  28P01: message"


class PGoauthBearerRequest(ctypes.Structure):
    pass


# PostgresPollingStatusType (*async)(PGconn *, PGoauthBearerRequest *, int *altsock)   (PQ_SOCKTYPE is int here)
ASYNC_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(PGoauthBearerRequest),
                            ctypes.POINTER(ctypes.c_int))
# void (*cleanup)(PGconn *, PGoauthBearerRequest *)
CLEANUP_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(PGoauthBearerRequest))

PGoauthBearerRequest._fields_ = [
    ("openid_configuration", ctypes.c_char_p),  # input: OIDC discovery URL (from the server's discovery JSON)
    ("scope", ctypes.c_char_p),  # input: required scope(s), or NULL
    ("async_", ASYNC_CB),  # output: async flow (unused: the token is at hand)
    ("cleanup", CLEANUP_CB),  # output: frees what the hook allocated
    ("token", ctypes.c_void_p),  # output: char *, owned by the application (libpq strdup()s it)
    ("user", ctypes.c_void_p),
]

# int (*PQauthDataHook_type)(PGauthData type, PGconn *conn, void *data)
HOOK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def main() -> None:
    args = json.load(sys.stdin)
    lib = ctypes.CDLL(args["libpq"])
    libc = ctypes.CDLL(None)
    libc.strdup.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]
    libc.free.restype = None
    libc.free.argtypes = [ctypes.c_void_p]

    lib.PQlibVersion.restype = ctypes.c_int
    lib.PQdefaultAuthDataHook.restype = ctypes.c_int
    lib.PQdefaultAuthDataHook.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.PQsetAuthDataHook.restype = None
    lib.PQsetAuthDataHook.argtypes = [HOOK]
    lib.PQconnectStart.restype = ctypes.c_void_p
    lib.PQconnectStart.argtypes = [ctypes.c_char_p]
    lib.PQconnectPoll.restype = ctypes.c_int
    lib.PQconnectPoll.argtypes = [ctypes.c_void_p]
    lib.PQsetErrorVerbosity.restype = ctypes.c_int
    lib.PQsetErrorVerbosity.argtypes = [ctypes.c_void_p, ctypes.c_int]
    for f in ("PQstatus", "PQsocket", "PQsslInUse"):
        getattr(lib, f).restype = ctypes.c_int
        getattr(lib, f).argtypes = [ctypes.c_void_p]
    lib.PQerrorMessage.restype = ctypes.c_char_p
    lib.PQerrorMessage.argtypes = [ctypes.c_void_p]
    lib.PQexec.restype = ctypes.c_void_p
    lib.PQexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.PQresultStatus.restype = ctypes.c_int
    lib.PQresultStatus.argtypes = [ctypes.c_void_p]
    lib.PQresultErrorMessage.restype = ctypes.c_char_p
    lib.PQresultErrorMessage.argtypes = [ctypes.c_void_p]
    lib.PQnfields.restype = ctypes.c_int
    lib.PQnfields.argtypes = [ctypes.c_void_p]
    lib.PQntuples.restype = ctypes.c_int
    lib.PQntuples.argtypes = [ctypes.c_void_p]
    lib.PQgetisnull.restype = ctypes.c_int
    lib.PQgetisnull.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.PQgetvalue.restype = ctypes.c_char_p
    lib.PQgetvalue.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.PQclear.argtypes = [ctypes.c_void_p]
    lib.PQfinish.argtypes = [ctypes.c_void_p]

    out = {"libpq_version": lib.PQlibVersion(), "hook_calls": [], "cleanups": 0}
    token = args["token"].encode() if args.get("token") is not None else None

    @CLEANUP_CB
    def cleanup(_conn, req_p):
        req = req_p.contents
        if req.token:
            libc.free(req.token)
            req.token = None
        out["cleanups"] += 1

    @HOOK
    def hook(kind, conn, data):
        if kind != PQAUTHDATA_OAUTH_BEARER_TOKEN:
            out["hook_calls"].append({"type": kind})
            return lib.PQdefaultAuthDataHook(kind, conn, data)
        req = ctypes.cast(data, ctypes.POINTER(PGoauthBearerRequest)).contents
        out["hook_calls"].append({
            "type": kind,
            "openid_configuration": req.openid_configuration and req.openid_configuration.decode(),
            "scope": req.scope and req.scope.decode(),
        })
        if token is None:
            return lib.PQdefaultAuthDataHook(kind, conn, data)
        # libpq copies the token at once and then calls cleanup: the malloc'd copy is ours to free there.
        req.token = libc.strdup(token)
        req.cleanup = cleanup
        return 1

    lib.PQsetAuthDataHook(hook)

    conn = lib.PQconnectStart(args["conninfo"].encode())
    if not conn:
        raise SystemExit("PQconnectStart: out of memory")
    lib.PQsetErrorVerbosity(conn, PQERRORS_VERBOSE)
    status = PGRES_POLLING_WRITING
    while status not in (PGRES_POLLING_OK, PGRES_POLLING_FAILED):
        sock = lib.PQsocket(conn)
        if sock >= 0:
            r, w = ([sock], []) if status == PGRES_POLLING_READING else ([], [sock])
            if not any(select.select(r, w, [], 30)):
                raise SystemExit("timed out waiting for the connection")
        status = lib.PQconnectPoll(conn)

    out["connected"] = lib.PQstatus(conn) == CONNECTION_OK
    out["row"] = None
    out["error"] = None
    if out["connected"]:
        out["ssl"] = bool(lib.PQsslInUse(conn))
        res = lib.PQexec(conn, args.get("query", "select 1").encode())
        if lib.PQresultStatus(res) == PGRES_TUPLES_OK and lib.PQntuples(res) > 0:
            out["row"] = [None if lib.PQgetisnull(res, 0, i) else lib.PQgetvalue(res, 0, i).decode()
                          for i in range(lib.PQnfields(res))]
        else:
            out["error_text"] = (lib.PQresultErrorMessage(res) or b"").decode()
        lib.PQclear(res)
    else:
        text = (lib.PQerrorMessage(conn) or b"").decode(errors="replace")
        out["error_text"] = text
        # The last server-reported error (libpq prefixes each attempt with "connection to server ... failed: ").
        found = re.findall(r"(FATAL|ERROR):  ([0-9A-Z]{5}): ([^\n]*)", text)
        if found:
            sev, code, msg = found[-1]
            out["error"] = {"severity": sev, "sqlstate": code, "message": msg}
    lib.PQfinish(conn)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
