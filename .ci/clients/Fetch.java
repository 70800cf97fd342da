// Java's built-in SOCKS client (java.net.Socket through a SOCKS proxy, -DsocksProxyVersion=4; the
// user id is the user.name property) as socks4-check --client drives it:
// java -DsocksProxyVersion=4 -Duser.name=USER Fetch PROXY_HOST PROXY_PORT HOST PORT PATH TIMEOUT_SECS
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Proxy;
import java.net.Socket;
import java.nio.charset.StandardCharsets;

public class Fetch {
    public static void main(String[] a) throws Exception {
        Proxy proxy = new Proxy(Proxy.Type.SOCKS, new InetSocketAddress(a[0], Integer.parseInt(a[1])));
        int timeout = (int) (Double.parseDouble(a[5]) * 1000);
        try (Socket s = new Socket(proxy)) {
            s.setSoTimeout(timeout);
            s.connect(new InetSocketAddress(a[2], Integer.parseInt(a[3])), timeout);
            s.setSoTimeout(10000);
            OutputStream out = s.getOutputStream();
            out.write(("GET " + a[4] + " HTTP/1.0\r\nHost: " + a[2] + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
            out.flush();
            InputStream in = s.getInputStream();
            byte[] buf = new byte[65536];
            int n;
            while ((n = in.read(buf)) > 0) {
                System.out.write(buf, 0, n);
            }
            System.out.flush();
        }
    }
}
