"""Run moto_server single-threaded.

moto_server (5.x) has no command-line switch for this: moto/server.py calls werkzeug's
run_simple(..., threaded=True) unconditionally. Threaded moto loses Kinesis records under
concurrent PutRecords to one shard (see LOCAL-AWS.md), so this wrapper forces threaded=False
and otherwise behaves exactly like moto_server (same arguments: -H HOST -p PORT ...).
With threaded=False werkzeug also answers HTTP/1.0 and closes each connection, so one idle
keep-alive client cannot block the others.
"""

import moto.server as moto_server

_run_simple = moto_server.run_simple


def _run_simple_single_threaded(*args, **kwargs):
    kwargs["threaded"] = False
    kwargs["processes"] = 1
    return _run_simple(*args, **kwargs)


moto_server.run_simple = _run_simple_single_threaded

if __name__ == "__main__":
    moto_server.main()
