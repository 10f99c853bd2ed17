"""A real gRPC service and client (Debian's python3-grpcio), for the
end-to-end test of gRPC through a tunnel (e2e `trailers::grpc_*`).

Generic handlers with bytes in and out: no .proto, no protoc.

  peer.py serve                 prints the port it listens on, then serves
  peer.py call TARGET AUTHORITY CA_FILE INTERVAL
                                runs every check against TARGET (host:port
                                of the tunnel server's HTTPS listener) with
                                AUTHORITY as :authority and TLS name (CA_FILE
                                "-": cleartext, HTTP/2 prior knowledge); prints
                                one line per check, exits non-zero on the
                                first that fails
"""

import queue
import sys
import time
from concurrent import futures

import grpc

SERVICE = "cryptun.test.Echo"


def serve():
    def unary(request, context):
        return b"echo:" + request

    def bidi(requests, context):
        for message in requests:
            yield b"pong:" + message

    def count(request, context):
        n, interval = request.decode().split()
        for i in range(int(n)):
            time.sleep(float(interval))
            yield str(i).encode()

    def refuse(request, context):
        context.set_trailing_metadata((("x-why", "closed"),))
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "no entry for " + request.decode())

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def check(name, ok, detail):
    print(("ok " if ok else "FAILED ") + name + ": " + detail, flush=True)
    if not ok:
        sys.exit(1)


def call(target, authority, ca_file, interval):
    if ca_file == "-":
        channel = grpc.insecure_channel(target, (("grpc.default_authority", authority),))
    else:
        with open(ca_file, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = (
            ("grpc.ssl_target_name_override", authority),
            ("grpc.default_authority", authority),
        )
        channel = grpc.secure_channel(target, credentials, options)
    method = lambda kind, name: getattr(channel, kind)("/" + SERVICE + "/" + name)

    # Unary: the answer, and status OK (which travels in trailers).
    answer, call = method("unary_unary", "Unary").with_call(b"hello", timeout=20)
    check("unary", answer == b"echo:hello" and call.code() == grpc.StatusCode.OK,
          repr(answer) + " " + str(call.code()))

    # An error status with its message and trailing metadata intact.
    try:
        method("unary_unary", "Refuse")(b"mallory", timeout=20)
        check("status", False, "no error")
    except grpc.RpcError as err:
        trailing = dict(err.trailing_metadata() or ())
        check("status",
              err.code() == grpc.StatusCode.PERMISSION_DENIED
              and err.details() == "no entry for mallory"
              and trailing.get("x-why") == "closed",
              str(err.code()) + " " + repr(err.details()) + " " + repr(trailing))

    # Bidirectional: each message sent only after the last one's answer
    # came back (a proxy that waits for the request's end never answers),
    # pausing past the server's body timeout on the way.
    outbox = queue.Queue()

    def messages():
        while True:
            message = outbox.get()
            if message is None:
                return
            yield message

    replies = method("stream_stream", "Bidi")(messages(), timeout=60)
    got = []
    for i in range(5):
        if i == 3:
            time.sleep(interval * 2)
        outbox.put(b"ping %d" % i)
        got.append(next(replies))
    outbox.put(None)
    rest = list(replies)
    check("bidi", got == [b"pong:ping %d" % i for i in range(5)] and rest == []
          and replies.code() == grpc.StatusCode.OK, repr(got) + " " + repr(rest))

    # A long server stream: a message every INTERVAL, for longer than any
    # idle timeout of the server.
    started = time.monotonic()
    counted = list(method("unary_stream", "Count")(b"8 %f" % interval, timeout=60))
    took = time.monotonic() - started
    check("stream", counted == [str(i).encode() for i in range(8)],
          repr(counted) + " in %.1f s" % took)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
