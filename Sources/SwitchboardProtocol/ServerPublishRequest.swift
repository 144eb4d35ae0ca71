public import NIOCore

/// The body of `POST /v1/publish`, the server API for backend services:
/// `{"user":"bob","data":…}`, `{"room":"lobby","data":…}` or `{"broadcast":true,"data":…}`,
/// with an optional `"from"` (default `server`). docs/openapi.yaml is the contract.
public struct ServerPublishRequest: Sendable {
    /// Who gets the message.
    public enum Target: Sendable, Equatable {
        case user(UserID)
        case room(RoomID)
        case everyone
    }

    public var target: Target
    /// The `from` of the frame recipients get.
    public var from: UserID
    /// The exact bytes of `data`, never re-encoded.
    public var data: ByteBuffer

    /// ``frame`` without its closing brace, for a history store to complete; nil for `broadcast`
    /// (not kept in history).
    public var head: ByteBuffer? {
        switch target {
        case .user(let user): ServerFrame.directHead(from: from, to: user, data: data)
        case .room(let room): ServerFrame.roomHead(room, from: from, data: data)
        case .everyone: nil
        }
    }

    /// The frame recipients get: `direct`, `room` or `broadcast`.
    public var frame: ByteBuffer {
        switch target {
        case .user(let user): ServerFrame.direct(from: from, to: user, data: data)
        case .room(let room): ServerFrame.room(room, from: from, data: data)
        case .everyone: ServerFrame.broadcast(from: from, data: data)
        }
    }

    /// `server`: the `from` of publishes that name none.
    public static let defaultSender: UserID = {
        do { return try UserID(validating: "server") } catch { preconditionFailure("\"server\" is a valid id") }
    }()

    /// Parses and checks a request body; the error's message says what is wrong.
    public static func decode(_ body: ByteBuffer) -> Result<ServerPublishRequest, ProtocolError> {
        let members: [JSONMember]
        do {
            members = try JSONScanner.topLevelMembers(of: Array(body.readableBytesView))
        } catch {
            return .failure(ProtocolError(.invalidMessage, "the body must be one JSON object (\(error))"))
        }
        let fields = Fields(members: members, message: body)
        do throws(ProtocolError) {
            let targets = ["user", "room", "broadcast"].filter { fields.member($0) != nil }
            guard targets.count == 1 else {
                throw ProtocolError(.invalidMessage, "name exactly one target: \"user\", \"room\" or \"broadcast\": true")
            }
            let target: Target
            switch targets[0] {
            case "user":
                target = .user(try fields.userID("user"))
            case "room":
                target = .room(try fields.roomID("room"))
            default:
                guard let member = fields.member("broadcast"), member.kind == .bool,
                    body.getString(at: body.readerIndex + member.range.lowerBound, length: member.range.count) == "true"
                else {
                    throw ProtocolError(.invalidMessage, "\"broadcast\" must be true")
                }
                target = .everyone
            }
            let from = fields.member("from") == nil ? Self.defaultSender : try fields.userID("from")
            return .success(ServerPublishRequest(target: target, from: from, data: try fields.data()))
        } catch {
            return .failure(error)
        }
    }
}
