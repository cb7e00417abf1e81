//! The D-Bus calls berth makes on the host: systemd-machined's registry
//! (org.freedesktop.machine1.Manager) and systemd's own manager
//! (org.freedesktop.systemd1.Manager). The interfaces, as far as berth uses
//! them, are in dbus/*.xml; the system tier compares them with the live
//! services.
//!
//! zbus runs on a tokio runtime of the current thread, driven only inside
//! these calls: berth stays single-threaded, which cloning the machine's
//! processes requires (see `sys::clone_process`).

use std::path::{Path, PathBuf};

use zbus::Variant;

pub const MACHINED: &str = "org.freedesktop.machine1";
const MACHINED_PATH: &str = "/org/freedesktop/machine1";
const MACHINED_MANAGER: &str = "org.freedesktop.machine1.Manager";
pub const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// The longest berth waits for one answer on the bus (machined's
/// CreateMachine waits for systemd's scope job).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the system bus listens when the host has one.
const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("connecting to the system bus: {0}")]
    Connect(zbus::Error),
    #[error("{what}: {answer}")]
    Call { what: String, answer: String },
    #[error("starting the D-Bus runtime: {0}")]
    Runtime(std::io::Error),
}

/// A connection to the host's system bus.
pub struct SystemBus {
    rt: tokio::runtime::Runtime,
    conn: zbus::Connection,
}

/// What machined is told about a machine.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    /// The machine id (16 bytes).
    pub id: [u8; 16],
    /// The machine's PID 1, on the host.
    pub leader: u32,
    pub root_directory: PathBuf,
    /// Host-side network interfaces of the machine (none yet).
    pub ifindices: Vec<i32>,
}

/// The text of a D-Bus error answer, e.g.
/// "org.freedesktop.machine1.NoSuchMachine: No machine 'x' known".
fn answer(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(text), _) => format!("{}: {text}", name.as_str()),
        zbus::Error::MethodError(name, None, _) => name.as_str().to_string(),
        other => other.to_string(),
    }
}

/// Whether the host runs systemd as its service manager (sd_booted()).
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

impl SystemBus {
    /// The system bus, or None when this host has none (no systemd, no
    /// dbus: berth then boots its machines unregistered). The socket is
    /// $DBUS_SYSTEM_BUS_ADDRESS's when set (tests point it at a bus of
    /// their own).
    pub fn connect() -> Result<Option<SystemBus>, BusError> {
        if std::env::var_os("DBUS_SYSTEM_BUS_ADDRESS").is_none() && !Path::new(SYSTEM_BUS_SOCKET).exists() {
            return Ok(None);
        }
        // Timers too: zbus sleeps when the bus's backlog is full, and every
        // call has a deadline (berth's signals wait while it blocks here).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(BusError::Runtime)?;
        let conn = rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, zbus::Connection::system()).await })
            .map_err(|_| BusError::Connect(zbus::Error::Failure("no answer in time".into())))?;
        match conn {
            Ok(conn) => Ok(Some(SystemBus { rt, conn })),
            // A socket left behind on a host without systemd: no bus.
            Err(_) if !systemd_booted() => Ok(None),
            Err(e) => Err(BusError::Connect(e)),
        }
    }

    /// One call, with a deadline.
    fn raw_call<B>(&self, dest: &str, path: &str, iface: &str, method: &str, body: &B) -> Result<zbus::Message, String>
    where
        B: serde::ser::Serialize + zbus::DynamicType,
    {
        self.rt
            .block_on(async {
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    self.conn.call_method(Some(dest), path, Some(iface), method, body),
                )
                .await
            })
            .map_err(|_| format!("no answer within {} s", CALL_TIMEOUT.as_secs()))?
            .map_err(answer)
    }

    fn call<B>(
        &self,
        what: String,
        dest: &str,
        path: &str,
        iface: &str,
        method: &str,
        body: &B,
    ) -> Result<zbus::Message, BusError>
    where
        B: serde::ser::Serialize + zbus::DynamicType,
    {
        self.raw_call(dest, path, iface, method, body)
            .map_err(|answer| BusError::Call { what, answer })
    }

    /// Whether systemd-machined is there (running, or started on demand):
    /// on Debian it comes with the systemd-container package.
    pub fn has_machined(&self) -> bool {
        let dbus = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus");
        let owned = self
            .raw_call(dbus.0, dbus.1, dbus.2, "NameHasOwner", &(MACHINED,))
            .ok()
            .and_then(|m| m.body().deserialize::<bool>().ok())
            .unwrap_or(false);
        owned
            || self
                .raw_call(dbus.0, dbus.1, dbus.2, "ListActivatableNames", &())
                .ok()
                .and_then(|m| m.body().deserialize::<Vec<String>>().ok())
                .is_some_and(|names| names.iter().any(|n| n == MACHINED))
    }

    /// Register a machine whose leader already sits in the cgroup of the
    /// unit berth runs as (`--keep-unit`): machined derives the unit from it.
    pub fn register_machine(&self, r: &Registration) -> Result<(), BusError> {
        let root = r.root_directory.to_string_lossy();
        let body = (
            r.name.as_str(),
            r.id.to_vec(),
            "berth",
            "container",
            r.leader,
            root.as_ref(),
            r.ifindices.clone(),
        );
        self.call(
            format!("systemd-machined refused to register machine \"{}\"", r.name),
            MACHINED,
            MACHINED_PATH,
            MACHINED_MANAGER,
            "RegisterMachineWithNetwork",
            &body,
        )
        .map(drop)
    }

    /// Register a machine started from a shell: machined asks systemd for a
    /// transient scope machine-NAME.scope in machine.slice with
    /// `properties`, and moves the leader there.
    pub fn create_machine(&self, r: &Registration, properties: Vec<(&str, Variant<'_>)>) -> Result<(), BusError> {
        let root = r.root_directory.to_string_lossy();
        let body = (
            r.name.as_str(),
            r.id.to_vec(),
            "berth",
            "container",
            r.leader,
            root.as_ref(),
            r.ifindices.clone(),
            properties,
        );
        self.call(
            format!("systemd-machined refused to create machine \"{}\"", r.name),
            MACHINED,
            MACHINED_PATH,
            MACHINED_MANAGER,
            "CreateMachineWithNetwork",
            &body,
        )
        .map(drop)
    }

    /// Forget a machine (best effort: a machine whose unit ended is gone
    /// already).
    pub fn unregister_machine(&self, name: &str) -> Result<(), BusError> {
        self.call(
            format!("unregistering machine \"{name}\""),
            MACHINED,
            MACHINED_PATH,
            MACHINED_MANAGER,
            "UnregisterMachine",
            &(name,),
        )
        .map(drop)
    }

    /// Whether machined knows a machine of this name.
    pub fn machine_exists(&self, name: &str) -> Result<bool, BusError> {
        match self.raw_call(MACHINED, MACHINED_PATH, MACHINED_MANAGER, "GetMachine", &(name,)) {
            Ok(_) => Ok(true),
            Err(answer) if answer.starts_with("org.freedesktop.machine1.NoSuchMachine") => Ok(false),
            Err(answer) => Err(BusError::Call {
                what: format!("asking systemd-machined for machine \"{name}\""),
                answer,
            }),
        }
    }

    /// Set properties of a unit for this boot of the host (runtime).
    pub fn set_unit_properties(&self, unit: &str, properties: Vec<(&str, Variant<'_>)>) -> Result<(), BusError> {
        self.call(
            format!("systemd refused the properties of {unit}"),
            SYSTEMD,
            SYSTEMD_PATH,
            SYSTEMD_MANAGER,
            "SetUnitProperties",
            &(unit, true, properties),
        )
        .map(drop)
    }
}

/// The 16 bytes of a machine id given as 32 hex digits.
pub fn id_bytes(hex: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_as_bytes() {
        let id = id_bytes("3d1219c7c4c5404aaa1f6d2a48adfda4");
        assert_eq!(id[0], 0x3d);
        assert_eq!(id[15], 0xa4);
        assert_eq!(id_bytes(""), [0u8; 16]);
    }

    /// The calls berth makes have the signatures machined and systemd
    /// publish (dbus/*.xml, which the system tier compares with the live
    /// services).
    #[test]
    fn bodies_have_the_published_signatures() {
        use zbus::DynamicType;
        let r = Registration {
            name: "web".into(),
            id: [0; 16],
            leader: 42,
            root_directory: "/var/lib/machines/web".into(),
            ifindices: vec![],
        };
        let register = (
            r.name.as_str(),
            r.id.to_vec(),
            "berth",
            "container",
            r.leader,
            "/",
            r.ifindices.clone(),
        );
        assert_eq!(register.signature().to_string(), "(sayssusai)");
        let props: Vec<(&str, Variant<'_>)> = vec![("Delegate", Variant::from(true))];
        let create = (
            "web",
            Vec::<u8>::new(),
            "berth",
            "container",
            1u32,
            "/",
            Vec::<i32>::new(),
            props.clone(),
        );
        assert_eq!(create.signature().to_string(), "(sayssusaia(sv))");
        assert_eq!(("u", true, props).signature().to_string(), "(sba(sv))");
        for (iface, method, sig) in [
            ("machine1", "RegisterMachineWithNetwork", "sayssusai"),
            ("machine1", "CreateMachineWithNetwork", "sayssusaia(sv)"),
            ("systemd1", "SetUnitProperties", "sba(sv)"),
        ] {
            let xml = std::fs::read_to_string(format!(
                "{}/dbus/org.freedesktop.{iface}.Manager.xml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let m = xml
                .split("<method ")
                .find(|m| m.starts_with(&format!("name=\"{method}\"")))
                .unwrap_or_else(|| panic!("{method} not in the XML"));
            let m = &m[..m.find("</method>").unwrap()];
            let ins: String = m
                .split("<arg ")
                .skip(1)
                .filter(|a| a.contains("direction=\"in\""))
                .map(|a| a.split("type=\"").nth(1).unwrap().split('"').next().unwrap())
                .collect();
            assert_eq!(ins, sig, "{method}");
        }
    }
}
