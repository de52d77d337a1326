//! Commands and a runner for the metadata state machine's tests (shared by its test modules).

use super::command::Command;
use super::image::MetadataImage;
use super::state_machine::apply;

pub fn register(id: i32, incarnation: u64) -> Command {
    Command::RegisterBroker {
        id,
        host: "localhost".into(),
        port: 9090 + id as u16,
        rack: None,
        rpc: None,
        incarnation,
    }
}

pub fn fence(id: i32, incarnation: u64) -> Command {
    Command::FenceBroker { id, incarnation }
}

/// Applies `commands` in order after `image`, each at the next index, asserting each succeeds.
pub fn run(image: &MetadataImage, commands: &[Command]) -> MetadataImage {
    let mut image = image.clone();
    for command in commands {
        let (next, result) = apply(&image, image.version + 1, command);
        result.unwrap_or_else(|e| panic!("{command:?}: {e}"));
        image = next;
    }
    image
}
