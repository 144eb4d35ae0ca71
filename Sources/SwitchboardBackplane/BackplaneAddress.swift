public import SwitchboardProtocol

/// Where a frame is published and what a gateway binds: one user, one room, or every gateway.
public enum BackplaneAddress: Hashable, Sendable, CustomStringConvertible {
    case user(UserID)
    case room(RoomID)
    case broadcast

    /// The AMQP routing key / channel name form: `user.<word>`, `room.<word>`, `broadcast`.
    public var routingKey: String {
        switch self {
        case .user(let id): "user." + RoutingWord.encode(id)
        case .room(let id): "room." + RoutingWord.encode(id)
        case .broadcast: "broadcast"
        }
    }

    public var description: String { routingKey }
}
