use super::Harness;
use crate::SandboxLimits;
use std::time::Duration;

fn hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore]
fn probe_map_bomb() {
    let h = Harness::with_limits(SandboxLimits {
        timeout: Duration::from_millis(300),
        ..SandboxLimits::default()
    });
    eprintln!("before {}", hwm());
    let r = h.run(r#"let s = ""; s.pad(1000000, "x"); let m = #{}; let i = 0; loop { m[`${i}`] = s + "y"; i += 1; }"#);
    eprintln!("{r:?}");
    eprintln!("after {}", hwm());
}
