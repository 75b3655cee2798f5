//! What a requester's reason claims, checked against the broker's facts.

use super::Facts;

/// What a requester's reason claims that the broker can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// "approved before", "as last time", "already allowed".
    PriorApproval,
    /// "the user asked for this", "with the user's permission".
    Consent,
    /// "urgent", "production is down", "right now".
    Urgency,
}

const PRIOR_APPROVAL: &[&str] = &[
    "approved before",
    "approved earlier",
    "approved it before",
    "approved this before",
    "already approved",
    "previously approved",
    "pre-approved",
    "preapproved",
    "you approved",
    "was approved",
    "been approved",
    "already allowed",
    "allowed before",
    "as before",
    "as last time",
    "same as last time",
    "same as before",
    "like last time",
    "again",
    "routine",
    "usual",
];

const CONSENT: &[&str] = &[
    "user asked",
    "user wants",
    "user requested",
    "user approved",
    "user agreed",
    "user said",
    "user told",
    "user confirmed",
    "user authorized",
    "user authorised",
    "user has",
    "user's consent",
    "user's permission",
    "users consent",
    "with permission",
    "with consent",
    "you asked",
    "you told me",
    "you said",
    "you requested",
    "you wanted",
    "as requested",
    "as instructed",
    "per your",
    "on your behalf",
    "authorized by",
    "authorised by",
    "owner approved",
    "admin approved",
    "consented",
];

const URGENCY: &[&str] = &[
    "urgent",
    "asap",
    "emergency",
    "immediately",
    "right now",
    "right away",
    "critical",
    "outage",
    "is down",
    "hurry",
    "quickly",
    "time-sensitive",
    "time sensitive",
    "deadline",
    "no time",
    "before it's too late",
    "expires in",
];

/// The claims a reason makes (case-insensitive phrase match; a claim is a claim, whatever
/// the wording around it).
fn claims(reason: &str) -> Vec<Claim> {
    let r = reason.to_lowercase();
    let r = r.replace(['\u{2019}', '`'], "'");
    let mut out = Vec::new();
    for (claim, phrases) in [
        (Claim::PriorApproval, PRIOR_APPROVAL),
        (Claim::Consent, CONSENT),
        (Claim::Urgency, URGENCY),
    ] {
        if phrases.iter().any(|p| r.contains(p)) {
            out.push(claim);
        }
    }
    out
}

/// Plain sentences for the card where the reason claims what the broker's facts contradict.
/// Empty when there is no reason, or it claims nothing the facts contradict.
pub(crate) fn contradictions(reason: Option<&str>, facts: &Facts) -> Vec<String> {
    let Some(reason) = reason else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let c = claims(reason);
    if c.contains(&Claim::PriorApproval) && !facts.approved_before {
        out.push("this command was never approved before".to_owned());
    }
    if c.contains(&Claim::Consent) && !facts.approved_before {
        out.push(
            "the user has approved nothing for this command: no approval of it is recorded; approving this card would be the first"
                .to_owned(),
        );
    }
    if (c.contains(&Claim::PriorApproval) || c.contains(&Claim::Consent))
        && (facts.denied_before || !facts.denied_behaviour.is_empty())
    {
        out.push(
            "the user denied this command, or one doing the same, within the last hour".to_owned(),
        );
    }
    if c.contains(&Claim::Urgency) {
        out.push(
            "nothing the broker knows makes this request urgent: urgency is only the requester's word"
                .to_owned(),
        );
    }
    out
}
