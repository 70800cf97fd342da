# The request and the read loop the Python clients share: GET PATH over the tunnel `s`, print all
# of the response (socks4-check --client compares it with the page it served).
import sys


def get(s, host, path):
    s.settimeout(10)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
