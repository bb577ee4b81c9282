"""A stock gRPC client for tollgate-sync: Python grpcio, no generated code, no tollgate code.

Usage: grpcio_client.py HOST:PORT DOMAIN

grpcio alone has no Envoy protos, so the few protobuf fields used are written and read by hand
(varints and length-delimited fields); the call itself is plain grpcio, as any RLS client makes it.
Sends 7 single-descriptor requests against a 5/minute limit and prints `admitted N of 7`.
"""

import sys

import grpc

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
MINUTE = 2  # envoy.type.v3.RateLimitUnit.MINUTE
OK, OVER_LIMIT = 1, 2


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, payload):
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def request(domain, entries, requests_per_unit, unit):
    descriptor = b"".join(field(1, field(1, k.encode()) + field(2, v.encode())) for k, v in entries)
    descriptor += field(2, field(1, requests_per_unit) + field(2, unit))
    return field(1, domain.encode()) + field(2, descriptor)


def fields(data):
    """Yields (number, value) for each top-level field of a message."""
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 2:
            length, i = read_varint(data, i)
            value, i = data[i : i + length], i + length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield number, value


def read_varint(data, i):
    shift = n = 0
    while True:
        byte = data[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def main():
    target, domain = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out
        admitted = 0
        for i in range(7):
            reply = call(request(domain, [("user", "py")], 5, MINUTE), timeout=5)
            top = dict(fields(reply))
            status = dict(fields(top[2]))
            code, remaining = status.get(1, 0), status.get(3, 0)
            print(f"call {i}: overall_code={top.get(1)} code={code} limit_remaining={remaining}")
            assert top.get(1) == code
            if code == OK:
                admitted += 1
                assert remaining == 4 - i, remaining
            else:
                assert code == OVER_LIMIT and remaining == 0
        print(f"admitted {admitted} of 7")


if __name__ == "__main__":
    main()
