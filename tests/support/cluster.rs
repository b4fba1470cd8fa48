//! A local Redis Cluster for the tests: three masters (no replicas) on free loopback ports,
//! started once per test binary with `redis-server --cluster-enabled yes` and joined with
//! `redis-cli --cluster create`; killed when the binary exits (like the other servers).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{free_port, register_cleanup, Cleanup};

/// A free loopback port whose cluster bus port (port + 10000) is free too (`cluster-port`, to
/// choose the bus port, needs Redis 7).
fn free_port_with_bus() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

pub struct RedisCluster {
    /// The masters' client ports.
    pub ports: Vec<u16>,
    pub dir: PathBuf,
    pub pids: Vec<u32>,
}

/// The cluster shared by the tests of one binary (started on first use).
pub fn redis_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(3))
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let dir = tempfile::Builder::new().prefix("deriver-redis-cluster-").tempdir().unwrap().keep();
        let mut ports = Vec::new();
        let mut pids = Vec::new();
        for _ in 0..masters {
            let port = free_port_with_bus();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--cluster-enabled", "yes"])
                .arg("--port")
                .arg(port.to_string())
                .arg("--cluster-config-file")
                .arg(node_dir.join("nodes.conf"))
                .arg("--cluster-node-timeout")
                .arg("5000")
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs (install redis-server: scripts/dev-stack.sh install)");
            let pid = child.id();
            register_cleanup(Cleanup::Pid(pid));
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("redis-server (cluster node) exited: {st}");
                }
                assert!(Instant::now() < deadline, "redis-server (cluster node) did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            std::mem::forget(child);
            ports.push(port);
            pids.push(pid);
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs (it comes with redis-server, in the redis-tools package)");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let cluster = RedisCluster { ports, dir, pids };
        // Every node must see the whole cluster (all slots served, every node known).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = cluster.ports.iter().all(|&p| {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut cluster.node(p)).unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384") && info.contains(&format!("cluster_known_nodes:{masters}"))
            });
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// The seed list deriver is given: every master, comma-separated.
    pub fn url(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")).collect::<Vec<_>>().join(",")
    }

    /// A plain connection to one node.
    pub fn node(&self, port: u16) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap()
    }

    /// A cluster connection (commands go to the master of their keys' slot).
    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        let nodes: Vec<String> = self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")).collect();
        redis::cluster::ClusterClient::new(nodes).unwrap().get_connection().unwrap()
    }

    /// The hash slot of a key, as the cluster computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut self.node(self.ports[0])).unwrap()
    }

    /// The port of the master serving a slot, from `CLUSTER SLOTS`.
    pub fn master_of(&self, slot: u16) -> u16 {
        self.master_of_on(self.ports[0], slot)
    }

    /// The port of the master serving a slot, as the node on `port` sees it.
    pub fn master_of_on(&self, port: u16, slot: u16) -> u16 {
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut self.node(port)).unwrap();
        for r in ranges {
            let redis::Value::Array(parts) = r else { continue };
            let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end)), Some(redis::Value::Array(master))) = (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            if (*start..=*end).contains(&(slot as i64)) {
                let Some(redis::Value::Int(port)) = master.get(1) else { panic!("CLUSTER SLOTS: no port") };
                return *port as u16;
            }
        }
        panic!("no master serves slot {slot}")
    }

    /// A master's node id.
    pub fn node_id(&self, port: u16) -> String {
        redis::cmd("CLUSTER").arg("MYID").query(&mut self.node(port)).unwrap()
    }

    /// Moves a hash slot and its keys to another master, the way `redis-cli --cluster reshard`
    /// does: IMPORTING on the target, MIGRATING on the source, MIGRATE of every key, then
    /// `SETSLOT … NODE` on every master; waits until every node agrees.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let ok = |port: u16, cmd: &redis::Cmd| {
            let r: redis::RedisResult<()> = cmd.query(&mut self.node(port));
            r.unwrap_or_else(|e| panic!("{cmd:?} on {port}: {e}"));
        };
        ok(to, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("IMPORTING").arg(&from_id));
        ok(from, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("MIGRATING").arg(&to_id));
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100).query(&mut self.node(from)).unwrap();
            if keys.is_empty() {
                break;
            }
            ok(from, redis::cmd("MIGRATE").arg("127.0.0.1").arg(to).arg("").arg(0).arg(10_000).arg("KEYS").arg(&keys));
        }
        ok(to, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&to_id));
        ok(from, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&to_id));
        for &p in self.ports.iter().filter(|&&p| p != from && p != to) {
            ok(p, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&to_id));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ports.iter().all(|&p| self.master_of_on(p, slot) == to) {
            assert!(Instant::now() < deadline, "the nodes do not agree that slot {slot} moved");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Keys matching `pattern` on every master, as (port, key).
    pub fn keys_by_node(&self, pattern: &str) -> Vec<(u16, String)> {
        let mut out = Vec::new();
        for &p in &self.ports {
            let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut self.node(p)).unwrap();
            out.extend(keys.into_iter().map(|k| (p, k)));
        }
        out.sort();
        out
    }
}
