// A JDBC client (the driver DBeaver uses) run against gprxy: prints one line per check; the Node test asserts them.
import java.sql.*;

public class JdbcCheck {
  public static void main(String[] args) throws Exception {
    String url = args[0];
    try (Connection c = DriverManager.getConnection(url, args[1], args[2])) {
      try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT current_user, 40 + 2")) {
        r.next();
        System.out.println("user=" + r.getString(1) + " answer=" + r.getInt(2));
      }
      // Server-side prepared statements: prepareThreshold=1 makes the driver name them from the first use.
      try (PreparedStatement p = c.prepareStatement("SELECT ?::int * 2")) {
        int sum = 0;
        for (int i = 1; i <= 10; i++) {
          p.setInt(1, i);
          try (ResultSet r = p.executeQuery()) {
            r.next();
            sum += r.getInt(1);
          }
        }
        System.out.println("prepared_sum=" + sum);
      }
      c.setAutoCommit(false);
      try (Statement s = c.createStatement()) {
        s.execute("CREATE TEMP TABLE j (v int)");
        try (PreparedStatement p = c.prepareStatement("INSERT INTO j VALUES (?)")) {
          for (int i = 0; i < 100; i++) {
            p.setInt(1, i);
            p.addBatch();
          }
          p.executeBatch();
        }
        try (ResultSet r = s.executeQuery("SELECT count(*), sum(v) FROM j")) {
          r.next();
          System.out.println("batch_count=" + r.getInt(1) + " batch_sum=" + r.getLong(2));
        }
        try {
          s.execute("SELECT 1/0");
        } catch (SQLException e) {
          System.out.println("error_state=" + e.getSQLState());
        }
        c.rollback();
      }
      c.setAutoCommit(true);
      try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 'still fine'")) {
        r.next();
        System.out.println("after_rollback=" + r.getString(1));
      }
    }
    try {
      DriverManager.getConnection(url, args[1], "wrong-password").close();
      System.out.println("bad_password=accepted");
    } catch (SQLException e) {
      System.out.println("bad_password_state=" + e.getSQLState());
    }
  }
}
