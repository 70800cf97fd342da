// Node's `socks` package (SocksClient, type 4: SOCKS4a for a host name) as socks4-check --client
// drives it: node socks_fetch.js PROXY_HOST PROXY_PORT HOST PORT USER PATH TIMEOUT_SECS
const { SocksClient } = require('socks');
const [proxyHost, proxyPort, host, port, user, path, timeout] = process.argv.slice(2);
SocksClient.createConnection({
  proxy: { host: proxyHost, port: Number(proxyPort), type: 4, userId: user },
  command: 'connect',
  destination: { host, port: Number(port) },
  timeout: Number(timeout) * 1000,
}).then(({ socket }) => {
  socket.on('data', (d) => process.stdout.write(d));
  socket.on('error', (e) => { console.error(`socket: ${e.message}`); process.exitCode = 1; });
  socket.on('end', () => {});
  socket.write(`GET ${path} HTTP/1.0\r\nHost: ${host}\r\n\r\n`);
}).catch((e) => { console.error(`socks: ${e.message}`); process.exit(1); });
