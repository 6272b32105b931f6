# The Python handler traced to derive profiles/python.json (see ../README.md
# and ../../README.md). An ordinary Lambda handler: heavy standard-library
# imports at module scope, module state, and one branch per thing a typical
# handler does, chosen by the event's "case" (driver.py sends them in turn).
import datetime
import decimal
import email.parser
import hashlib
import http.client
import json
import logging
import random
import re
import uuid

import os
import resource
import sys
import threading
import time

logger = logging.getLogger()
logger.setLevel(logging.INFO)
COUNT = 0
WORD = re.compile(r"\w+")
HEADERS = email.parser.Parser().parsestr("Content-Type: text/plain\n\nbody")


def lambda_handler(event, context):
    global COUNT
    COUNT += 1
    case = event.get("case", "echo") if isinstance(event, dict) else "echo"
    return CASES[case](event, context)


def echo(event, context):
    # The modules imported above, used the way handlers use them.
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "count": COUNT,
        "len": len(json.dumps(event)),
        "words": len(WORD.findall(json.dumps(event)[:1000])),
        "sum": str(decimal.Decimal("0.1") + decimal.Decimal("0.2")),
        "sha": hashlib.sha256(json.dumps(event).encode()).hexdigest(),
        "rand": random.random(),
        "uuid4": str(uuid.uuid4()),
        "uuid1": str(uuid.uuid1()),
        "now": now.isoformat(),
        "ctype": HEADERS.get_content_type(),
        "remaining": context.get_remaining_time_in_millis(),
        "cwd": os.getcwd(),
        # CPU time and peak memory, as handlers report them.
        "cpu": time.process_time(),
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def big(event, context):
    return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "x" * event["n"]}


def boom(event, context):
    raise ValueError("bad input: %s" % event.get("boom"))


def log(event, context):
    print("print line of", context.aws_request_id)
    sys.stdout.write("partial line without a newline")
    sys.stderr.write("stderr line\n")
    logger.info("logging line of %s", context.aws_request_id)
    logger.warning("a warning with %s", {"k": 1})
    context.log("context.log line\n")
    t = threading.Thread(target=print, args=("print from a thread",))
    t.start()
    t.join()
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("logged exception")
    return {"logged": True}


def tmp(event, context):
    # /tmp is the writable scratch space of a Lambda function.
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="derive-")
    p = os.path.join(d, "a.json")
    with open(p, "w") as f:
        json.dump(event, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(p, os.path.join(d, "b.json"))
    # A file of the (read-only) code directory copied to /tmp.
    shutil.copy(__file__, d)
    os.mkdir(os.path.join(d, "sub"))
    shutil.copyfile(os.path.join(d, "b.json"), os.path.join(d, "sub", "c.json"))
    os.chmod(os.path.join(d, "sub", "c.json"), 0o600)
    os.utime(os.path.join(d, "sub", "c.json"))
    os.symlink("b.json", os.path.join(d, "link"))
    os.link(os.path.join(d, "b.json"), os.path.join(d, "hard"))
    with open(os.path.join(d, "link")) as f:
        data = json.load(f)
    names = sorted(os.listdir(d))
    with tempfile.TemporaryFile() as f:
        f.write(b"scratch")
        f.seek(0)
        f.truncate(3)
    # SQLite in /tmp (as root inside the sandbox it also fchowns its files).
    import sqlite3

    db = sqlite3.connect(os.path.join(d, "db.sqlite"))
    db.execute("pragma journal_mode=wal")
    db.execute("create table t (k text primary key, v text)")
    with db:
        db.executemany("insert into t values (?, ?)", [(str(i), "v" * i) for i in range(100)])
    rows = db.execute("select count(*) from t").fetchone()[0]
    db.close()
    shutil.rmtree(d)
    return {"names": names, "same": data == event, "rows": rows}


def _server():
    import http.server

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"pong": true}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def http_(event, context):
    # Outbound HTTP (as to an API): name resolution through getaddrinfo,
    # then a TCP connection. The server is on loopback, in a thread.
    import urllib.request

    srv = _server()
    port = srv.server_address[1]
    host = event.get("host", "localhost")
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("GET", "/x", headers={"accept": "application/json"})
    r = c.getresponse()
    first = json.loads(r.read())
    c.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/y", timeout=5) as r:
        second = json.loads(r.read())
    srv.shutdown()
    srv.server_close()
    return {"first": first, "second": second}


def asyncio_(event, context):
    import asyncio

    async def main():
        async def serve(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        line, _ = await asyncio.gather(reader.readline(), asyncio.sleep(0.01))
        writer.close()
        srv.close()
        await srv.wait_closed()
        loop = asyncio.get_running_loop()
        digest = await loop.run_in_executor(None, lambda: hashlib.sha1(line).hexdigest())
        return line.decode().strip(), digest

    line, digest = asyncio.run(main())
    return {"line": line, "digest": digest}


def subprocess_(event, context):
    import subprocess

    out = subprocess.run(["/bin/echo", "from a child"], capture_output=True, check=True)
    # A shell pipeline of common tools (shell.sh), and a child killed at its timeout.
    with open(os.path.join(os.path.dirname(__file__), "shell.sh")) as f:
        script = f.read()
    sh = subprocess.run(script, shell=True, capture_output=True, text=True, check=True)
    try:
        subprocess.run(["sleep", "5"], timeout=0.1)
    except subprocess.TimeoutExpired:
        pass
    return {"out": out.stdout.decode().strip(), "sh": sh.stdout.strip()}


def signal_(event, context):
    # The usual Lambda timeout guard: SIGALRM from alarm()/setitimer().
    import signal

    class Timeout(Exception):
        pass

    def on_alarm(signum, frame):
        raise Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, context.get_remaining_time_in_millis() // 1000 - 1))
    signal.alarm(0)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    try:
        time.sleep(1)
        fired = False
    except Timeout:
        fired = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    got = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    signal.raise_signal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, old)
    return {"fired": fired, "left": left > 0, "raised": got == [signal.SIGUSR1]}


def _square(x):
    return x * x


def _child(conn):
    conn.send(sum(range(1000)))
    conn.close()


def parallel(event, context):
    # Threads, and processes with pipes (Lambda has no /dev/shm, so the
    # documented pattern is multiprocessing.Process + Pipe, not Pool).
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        squares = list(ex.map(_square, range(8)))
    parent, child = multiprocessing.Pipe()
    p = multiprocessing.Process(target=_child, args=(child,))
    p.start()
    got = parent.recv()
    p.join()
    return {"squares": squares, "child": got, "exitcode": p.exitcode}


def sleep(event, context):
    # Waits on a lock with a timeout (a futex wait); driver.py stops and
    # continues the process meanwhile, as a freezer or checkpoint would.
    done = threading.Event()
    threading.Timer(event.get("seconds", 0.5), done.set).start()
    done.wait(10)
    time.sleep(0.05)
    return {"slept": True}


CASES = {
    "echo": echo,
    "big": big,
    "boom": boom,
    "log": log,
    "tmp": tmp,
    "http": http_,
    "asyncio": asyncio_,
    "subprocess": subprocess_,
    "signal": signal_,
    "parallel": parallel,
    "sleep": sleep,
}
