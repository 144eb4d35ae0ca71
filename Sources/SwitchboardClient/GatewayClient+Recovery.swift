extension GatewayClient {
    /// A place in one stream of messages: the gateway's `{"epoch":…,"offset":…}`.
    ///
    /// Offsets count the messages of one stream from 1. An epoch names one life of the
    /// stream: when the gateway lost a stream and made it again, offsets start over in a
    /// new epoch, and a position in another epoch says nothing about this one. Codable, so
    /// an application can save the positions it got in ``Event/position(stream:position:)``
    /// and start from them again (``Configuration/resumeFrom``).
    public struct StreamPosition: Sendable, Hashable, Codable, CustomStringConvertible {
        /// The stream's life this offset belongs to.
        public var epoch: String
        /// The stream's message count at this position (0 before its first message).
        public var offset: Int

        public init(epoch: String, offset: Int) {
            self.epoch = epoch
            self.offset = offset
        }

        public var description: String { "\(epoch):\(offset)" }
    }

    /// A stream of messages the gateway can replay: the user's own (its direct messages)
    /// or one room's.
    public enum MessageStream: Sendable, Hashable, Codable, CustomStringConvertible {
        /// Direct messages to this client's user.
        case user
        /// Messages in this room.
        case room(String)

        public var description: String {
            switch self {
            case .user: "user"
            case .room(let room): "room \(room)"
            }
        }
    }

    /// What the gateway said when it took a direct message (``GatewayClient/sendDirect(to:json:)``).
    public struct DirectReceipt: Sendable, Hashable {
        /// The message's offset in the recipient's user stream, when the gateway's ack gave
        /// one (a gateway with history on does for a recipient connected nowhere).
        public var offset: Int?
        /// No gateway hosts the recipient now; the gateway's history keeps the message, and
        /// the recipient gets it when it resumes. A gateway with history off fails the
        /// send with `recipient_offline` instead.
        public var recipientOffline: Bool

        public init(offset: Int? = nil, recipientOffline: Bool = false) {
            self.offset = offset
            self.recipientOffline = recipientOffline
        }
    }
}

extension GatewayClient {
    /// Who is in a room (``GatewayClient/presence(_:)``).
    public struct Presence: Sendable, Hashable {
        /// One user and their connections in the room across all gateways. 0 connections:
        /// their last one just went, and a `left` follows unless they come back within the grace.
        public struct User: Sendable, Hashable {
            public var user: String
            public var connections: Int

            public init(user: String, connections: Int) {
                self.user = user
                self.connections = connections
            }
        }

        /// At most the gateway's list limit, by id.
        public var users: [User]
        /// Users in the room; more than `users.count` when `truncated`.
        public var count: Int
        public var truncated: Bool

        public init(users: [User], count: Int, truncated: Bool) {
            self.users = users
            self.count = count
            self.truncated = truncated
        }
    }
}
