package import SwitchboardProtocol

/// A user or room that is local to this gateway while at least one local connection
/// is that user or is a member of that room.
package enum LocalAddress: Hashable, Sendable {
    case user(UserID)
    case room(RoomID)
}
