//! Priority classes: P0 (incident) goes before P1 (maintenance), which goes before P2
//! (learning).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A request's class. Ordered by urgency: `P0 < P1 < P2`, so the smaller value is
/// served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// An incident: something is broken now.
    P0,
    /// Maintenance: work that keeps things running.
    P1,
    /// Learning: batch work, evaluations, experiments.
    P2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::P0, Priority::P1, Priority::P2];

    /// 0 for P0, 1 for P1, 2 for P2: how many classes stand above this one.
    pub fn rank(self) -> usize {
        match self {
            Priority::P0 => 0,
            Priority::P1 => 1,
            Priority::P2 => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P0 => "P0",
            Priority::P1 => "P1",
            Priority::P2 => "P2",
        }
    }

    /// This class, lowered to `ceiling` when it asks for more than that.
    pub fn at_most(self, ceiling: Priority) -> Priority {
        self.max(ceiling)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority `{0}`: expected P0, P1 or P2")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    /// Accepts `P0`, `P1`, `P2` in either case, with surrounding blanks.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_uppercase().as_str() {
            "P0" => Ok(Priority::P0),
            "P1" => Ok(Priority::P1),
            "P2" => Ok(Priority::P2),
            _ => Err(UnknownPriority(text.to_string())),
        }
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One value per priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerClass<T>(pub [T; 3]);

impl<T> PerClass<T> {
    pub fn get(&self, class: Priority) -> &T {
        &self.0[class.rank()]
    }

    pub fn get_mut(&mut self, class: Priority) -> &mut T {
        &mut self.0[class.rank()]
    }
}

impl<T: Serialize> Serialize for PerClass<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        for class in Priority::ALL {
            map.serialize_entry(class.as_str(), self.get(class))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_either_case_and_refuses_the_rest() {
        assert_eq!("P0".parse(), Ok(Priority::P0));
        assert_eq!(" p2 ".parse(), Ok(Priority::P2));
        assert!("P3".parse::<Priority>().is_err());
        assert!("high".parse::<Priority>().is_err());
        assert!("".parse::<Priority>().is_err());
    }

    #[test]
    fn urgent_classes_order_first_and_ceilings_lower_requests() {
        assert!(Priority::P0 < Priority::P1 && Priority::P1 < Priority::P2);
        assert_eq!(Priority::P0.at_most(Priority::P1), Priority::P1);
        assert_eq!(Priority::P2.at_most(Priority::P1), Priority::P2);
        assert_eq!(Priority::P1.at_most(Priority::P0), Priority::P1);
    }

    #[test]
    fn per_class_serializes_as_a_map() {
        let counts = PerClass([1, 2, 3]);
        assert_eq!(
            serde_json::to_value(counts).unwrap(),
            serde_json::json!({"P0": 1, "P1": 2, "P2": 3})
        );
    }
}
