//! [Resources] of a machine, as systemd unit properties (for the unit berth
//! runs as, or the scope machined makes) and as cgroupfs files (for hosts
//! without systemd). Either way they sit on a cgroup above the root of the
//! machine's cgroup namespace, so the machine cannot raise them.

use zbus::Variant;

use crate::spec::{Limit, Resources};

/// systemd's "infinity" for limits.
const INFINITY: u64 = u64::MAX;
/// cgroup v2's cpu.max period, in microseconds.
const CPU_PERIOD_USEC: u64 = 100_000;

fn or_infinity(l: Limit) -> u64 {
    l.unwrap_or(INFINITY)
}

fn or_max(l: Limit) -> String {
    l.map_or_else(|| "max".to_string(), |n| n.to_string())
}

/// Every limit berth manages, as unit properties: those set, and the
/// others at their defaults. Runtime properties of a unit outlive its
/// restarts (systemd keeps them until the host reboots), so a limit taken
/// out of the machine's file must be reset, not left alone.
pub fn all_unit_properties(r: &Resources) -> Vec<(&'static str, Variant<'static>)> {
    let set = unit_properties(r);
    let defaults: Vec<(&'static str, Variant<'static>)> = vec![
        ("MemoryMax", Variant::from(INFINITY)),
        ("MemoryHigh", Variant::from(INFINITY)),
        ("MemorySwapMax", Variant::from(INFINITY)),
        ("TasksMax", Variant::from(crate::cgroup::TASKS_MAX as u64)),
        ("CPUQuotaPerSecUSec", Variant::from(INFINITY)),
        // u64::MAX: "not set" for systemd's weights.
        ("CPUWeight", Variant::from(INFINITY)),
        ("IOWeight", Variant::from(INFINITY)),
        ("AllowedCPUs", Variant::from(Vec::<u8>::new())),
    ];
    defaults
        .into_iter()
        .map(|(name, default)| {
            set.iter()
                .find(|(n, _)| *n == name)
                .map(|(n, v)| (*n, v.try_clone().expect("plain values clone")))
                .unwrap_or((name, default))
        })
        .collect()
}

/// The unit properties of the limits set (SetUnitProperties, or the scope
/// properties of CreateMachine).
pub fn unit_properties(r: &Resources) -> Vec<(&'static str, Variant<'static>)> {
    let mut p: Vec<(&'static str, Variant<'static>)> = Vec::new();
    let mut limit = |name, l: Option<Limit>| {
        if let Some(l) = l {
            p.push((name, Variant::from(or_infinity(l))));
        }
    };
    limit("MemoryMax", r.memory_max);
    limit("MemoryHigh", r.memory_high);
    limit("MemorySwapMax", r.memory_swap_max);
    limit("TasksMax", r.tasks_max);
    if let Some(pct) = r.cpu_quota_percent {
        // systemd's unit: CPU time per second of wall time, in microseconds.
        p.push(("CPUQuotaPerSecUSec", Variant::from(pct * 10_000)));
    }
    if let Some(w) = r.cpu_weight {
        p.push(("CPUWeight", Variant::from(w)));
    }
    if let Some(w) = r.io_weight {
        p.push(("IOWeight", Variant::from(w)));
    }
    if let Some(cpus) = &r.allowed_cpus {
        p.push(("AllowedCPUs", Variant::from(cpu_mask(cpus))));
    }
    p
}

/// systemd's CPU set: a bit mask, CPU n at bit n % 8 of byte n / 8.
fn cpu_mask(cpus: &[u32]) -> Vec<u8> {
    let mut mask = vec![0u8; cpus.iter().max().map_or(0, |m| *m as usize / 8 + 1)];
    for c in cpus {
        mask[*c as usize / 8] |= 1 << (c % 8);
    }
    mask
}

/// The cgroupfs files (and values) of the limits set.
pub fn cgroup_files(r: &Resources) -> Vec<(&'static str, String)> {
    let mut f = Vec::new();
    let mut limit = |file, l: Option<Limit>| {
        if let Some(l) = l {
            f.push((file, or_max(l)));
        }
    };
    limit("memory.max", r.memory_max);
    limit("memory.high", r.memory_high);
    limit("memory.swap.max", r.memory_swap_max);
    limit("pids.max", r.tasks_max);
    if let Some(pct) = r.cpu_quota_percent {
        f.push(("cpu.max", format!("{} {CPU_PERIOD_USEC}", pct * CPU_PERIOD_USEC / 100)));
    }
    if let Some(w) = r.cpu_weight {
        f.push(("cpu.weight", w.to_string()));
    }
    if let Some(w) = r.io_weight {
        f.push(("io.weight", format!("default {w}")));
    }
    if let Some(cpus) = &r.allowed_cpus {
        f.push(("cpuset.cpus", crate::config::value::format_cpu_list(cpus)));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Resources {
        Resources {
            memory_max: Some(Some(512 << 20)),
            memory_high: Some(None),
            memory_swap_max: None,
            cpu_quota_percent: Some(150),
            cpu_weight: Some(200),
            tasks_max: Some(Some(64)),
            io_weight: None,
            allowed_cpus: Some(vec![0, 1, 9]),
        }
    }

    #[test]
    fn as_cgroup_files() {
        assert_eq!(
            cgroup_files(&sample()),
            [
                ("memory.max", "536870912".to_string()),
                ("memory.high", "max".to_string()),
                ("pids.max", "64".to_string()),
                ("cpu.max", "150000 100000".to_string()),
                ("cpu.weight", "200".to_string()),
                ("cpuset.cpus", "0-1,9".to_string()),
            ]
        );
        assert!(cgroup_files(&Resources::default()).is_empty());
    }

    #[test]
    fn a_limit_taken_out_is_reset() {
        let all = all_unit_properties(&Resources {
            memory_max: Some(Some(1 << 30)),
            ..Default::default()
        });
        assert_eq!(all.len(), 8);
        assert_eq!(all[0], ("MemoryMax", Variant::from(1u64 << 30)));
        assert_eq!(all[1], ("MemoryHigh", Variant::from(u64::MAX)));
        assert_eq!(all[3], ("TasksMax", Variant::from(16384u64)));
    }

    #[test]
    fn as_unit_properties() {
        let p = unit_properties(&sample());
        let names: Vec<&str> = p.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "MemoryMax",
                "MemoryHigh",
                "TasksMax",
                "CPUQuotaPerSecUSec",
                "CPUWeight",
                "AllowedCPUs"
            ]
        );
        assert_eq!(p[5].1, Variant::from(vec![0b0000_0011u8, 0b0000_0010]));
        assert_eq!(p[0].1, Variant::from(536870912u64));
        assert_eq!(p[1].1, Variant::from(u64::MAX));
        assert_eq!(p[3].1, Variant::from(1_500_000u64));
    }
}
