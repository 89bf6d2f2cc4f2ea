use super::*;

#[test]
fn the_lambda_payload_is_the_request_and_unknown_fields_are_refused() {
    let r: Request = serde_json::from_str(
        r#"{"command": "cutover", "migration": "orders-move", "reason": "CHG-1234", "dry_run": true}"#,
    )
    .unwrap();
    assert_eq!(r.command, CommandName::Cutover);
    assert_eq!(
        (r.migration.as_str(), r.dry_run, r.force),
        ("orders-move", true, false)
    );
    let ack: Request = serde_json::from_str(
        r#"{"command": "dlq_ack", "migration": "m", "all": true, "reason": "looked"}"#,
    )
    .unwrap();
    assert_eq!(ack.command, CommandName::DlqAck);
    let err = serde_json::from_str::<Request>(r#"{"command": "cutover", "forse": true}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `forse`"), "{err}");
    let err = serde_json::from_str::<Request>(r#"{"command": "flip"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `flip`"), "{err}");
}

#[test]
fn exit_codes_tell_refused_lost_and_failed_apart() {
    let codes: Vec<u8> = [
        Outcome::Applied,
        Outcome::AlreadyThere,
        Outcome::Failed,
        Outcome::DrainTimedOut,
        Outcome::RefusedByGuard,
        Outcome::NotAllowed,
        Outcome::LostRace,
        Outcome::AwaitingApproval,
    ]
    .map(Outcome::exit_code)
    .to_vec();
    assert_eq!(codes, [0, 0, 2, 2, 3, 3, 4, 5]);
}

mod consumers;
mod flips;
mod memory;
