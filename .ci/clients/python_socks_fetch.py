# python-socks (Debian's python3-python-socks), its sync API, as socks4-check --client drives it:
# python_socks_fetch.py PROXY_HOST PROXY_PORT HOST PORT USER PATH TIMEOUT_SECS (rdns: SOCKS4a for a name).
import sys
from python_socks import ProxyType
from python_socks.sync import Proxy

from http_get import get

proxy_host, proxy_port, host, port, user, path, timeout = sys.argv[1:8]
proxy = Proxy.create(ProxyType.SOCKS4, proxy_host, int(proxy_port), username=user or None, rdns=True)
s = proxy.connect(dest_host=host, dest_port=int(port), timeout=float(timeout))
get(s, host, path)
