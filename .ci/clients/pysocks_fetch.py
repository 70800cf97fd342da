# PySocks (Debian's python3-socks) as socks4-check --client drives it:
# pysocks_fetch.py PROXY_HOST PROXY_PORT HOST PORT USER PATH TIMEOUT_SECS (rdns: SOCKS4a for a name).
import sys
import socks

from http_get import get

proxy_host, proxy_port, host, port, user, path, timeout = sys.argv[1:8]
s = socks.socksocket()
s.set_proxy(socks.SOCKS4, proxy_host, int(proxy_port), rdns=True, username=user or None)
s.settimeout(float(timeout))
s.connect((host, int(port)))
get(s, host, path)
