// pgjdbc against a transaction pool of 2 servers: a server-prepared statement (named S_n by the driver) is used
// across transactions that land on different servers while another connection holds a server. Prints checks.
import java.sql.*;
import java.util.*;

public class JdbcTxCheck {
  public static void main(String[] args) throws Exception {
    String url = args[0];
    try (Connection a = DriverManager.getConnection(url, args[1], args[2]);
         Connection b = DriverManager.getConnection(url, args[1], args[2])) {
      Set<Integer> pids = new HashSet<>();
      int sum = 0;
      try (PreparedStatement p = a.prepareStatement("SELECT ?::int * 2, pg_backend_pid()")) {
        for (int i = 1; i <= 10; i++) {
          // Every other round b holds one server in an open transaction, so a runs on the other one.
          if (i % 2 == 0) {
            b.setAutoCommit(false);
            try (Statement s = b.createStatement()) { s.execute("SELECT 1"); }
          }
          p.setInt(1, i);
          try (ResultSet r = p.executeQuery()) {
            r.next();
            sum += r.getInt(1);
            pids.add(r.getInt(2));
          }
          if (i % 2 == 0) { b.commit(); b.setAutoCommit(true); }
        }
      }
      System.out.println("sum=" + sum);
      System.out.println("servers_used=" + (pids.size() >= 2 ? "several" : "one"));
      try (Statement s = a.createStatement();
           ResultSet r = s.executeQuery("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'gprxy_%'")) {
        r.next();
        System.out.println("server_side_names=" + (r.getInt(1) > 0 ? "gprxy" : "none"));
      }
    }
  }
}
