//! A server process of a test's own (a Mosquitto or RabbitMQ node with a TLS listener, say),
//! beside the machine's shared one: started, waited for until it listens, stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OwnServer {
    child: Child,
    pub port: u16,
}

impl OwnServer {
    /// Starts `command` (its output discarded) and waits up to `limit` until `127.0.0.1:port`
    /// accepts connections; panics naming the program otherwise.
    pub async fn start(mut command: Command, port: u16, limit: Duration) -> OwnServer {
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} (a Debian package; ./scripts/test installs it): {e}"));
        // Owned at once, so that a server that never listens is stopped too.
        let server = OwnServer { child, port };
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{program} did not listen on {port} within {limit:?}");
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: a RabbitMQ node's start script stops the node it started.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}
