//! Alertmanager webhook bodies: any bytes parse or fail with an error, never a panic, and
//! whatever parses survives a round trip through kabar's own serialisation.

#![no_main]

use kabar::Notification;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(notification) = Notification::parse(data) else {
        return;
    };
    for alert in &notification.alerts {
        let _ = (alert.fingerprint(), alert.name(), alert.severity());
    }
    let again = serde_json::to_vec(&notification).expect("a parsed notification serialises");
    let reparsed = Notification::parse(&again).expect("kabar reads what it wrote");
    assert_eq!(reparsed.alerts.len(), notification.alerts.len());
    assert_eq!(reparsed.receiver, notification.receiver);
});
