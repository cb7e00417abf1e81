//! `berth list`, `berth status` and `berth images` against machines the
//! tests boot (from berth's own records, no machined needed). Run as root
//! by `tests/run-all`.

mod common;

use std::time::Duration;

use common::*;

fn json(args: &[&str]) -> serde_json::Value {
    let out = run_berth(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn listed(name: &str) -> Option<serde_json::Value> {
    json(&["list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

#[test]
fn list_and_status_show_running_machines_and_forget_killed_ones() {
    let mut m = Machine::boot("t-list", &["--read-only"]);
    m.wait_ready();
    let entry = listed("t-list").expect("t-list is not listed");
    assert_eq!(entry["leader"], m.leader());
    assert_eq!(entry["supervisor"], m.child.id());
    assert_eq!(entry["tree"], tree().to_str().unwrap());
    assert_eq!(entry["private_network"], false);
    let since = entry["since"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(since <= now && now - since < 120, "since {since}, now {now}");
    // The table names it too.
    let text = String::from_utf8_lossy(&run_berth(&["list"]).stdout).to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("t-list ") && l.contains(&m.leader().to_string())),
        "{text}"
    );
    let status = json(&["status", "t-list", "--json"]);
    assert_eq!(status["leader"], m.leader());
    let text = String::from_utf8_lossy(&run_berth(&["status", "t-list"]).stdout).to_string();
    assert!(text.contains("OS: Debian GNU/Linux 12 (bookworm)"), "{text}");
    assert!(text.contains(&format!("Leader: {} (systemd)", m.leader())), "{text}");

    // A reboot inside: the same record, the new leader.
    let first = m.leader();
    m.exec_ok(&["systemctl", "reboot"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let leader = listed("t-list").and_then(|e| e["leader"].as_i64());
        if leader.is_some_and(|l| l as i32 != first && l != 0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the record kept the old leader");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGKILL of berth: the machine is gone from the list at once, and its
    // record with it.
    m.signal(libc::SIGKILL);
    m.wait_exit(Duration::from_secs(10));
    assert!(listed("t-list").is_none(), "a killed machine is still listed");
    assert!(!std::path::Path::new("/run/berth/machines/t-list.json").exists());
    let out = run_berth(&["status", "t-list"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "berth: machine \"t-list\" is not running"
    );
}

#[test]
fn images_lists_trees_with_os_size_and_who_runs_on_them() {
    let link = std::path::Path::new("/var/lib/machines/t-img");
    std::fs::create_dir_all("/var/lib/machines").unwrap();
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(tree(), link).unwrap();
    struct Gone(&'static str);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _gone = Gone("/var/lib/machines/t-img");
    let find = || -> serde_json::Value {
        json(&["images", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "t-img")
            .cloned()
            .expect("t-img is not listed")
    };
    let img = find();
    assert_eq!(img["os"], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(img["running"], false);
    assert_eq!(img["link"], true);
    // At least the size of /usr/bin/systemctl and far less than a disk.
    let size = img["size"].as_u64().unwrap();
    assert!(size > 100 << 20 && size < 4 << 30, "size {size}");
    let mut m = Machine::boot("t-img-user", &["--read-only"]);
    m.wait_ready();
    let img = find();
    assert_eq!(img["running"], true);
    assert_eq!(img["machines"], serde_json::json!(["t-img-user"]));
    m.stop_ok();
    assert_eq!(find()["running"], false);
}
