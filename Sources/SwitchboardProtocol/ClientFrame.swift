public import NIOCore

/// A frame a client sends, decoded and validated (wire protocol v1, docs/protocol.md).
///
/// `data` is kept as the exact bytes the client sent (a slice of the message,
/// not a copy), already checked to be valid JSON.
public enum ClientFrame: Sendable, Equatable {
    case direct(to: UserID, data: ByteBuffer, correlationID: CorrelationID?)
    /// With `since`, the gateway replays the room's messages after that position first.
    /// With `presence`, the connection also gets the room's `joined` and `left` events.
    case join(room: RoomID, since: StreamPosition? = nil, presence: Bool = false, correlationID: CorrelationID?)
    /// Asks who is in a room the connection is a member of.
    case presence(room: RoomID, correlationID: CorrelationID?)
    /// Replays the connection's own user stream after `since`.
    case resume(since: StreamPosition, correlationID: CorrelationID?)
    case leave(room: RoomID, correlationID: CorrelationID?)
    case publish(room: RoomID, data: ByteBuffer, correlationID: CorrelationID?)
    case ping(correlationID: CorrelationID?)

    /// The client's `id` for this frame, if it gave one.
    public var correlationID: CorrelationID? {
        switch self {
        case .direct(_, _, let id), .join(_, _, _, let id), .leave(_, let id), .publish(_, _, let id), .ping(let id), .resume(_, let id),
            .presence(_, let id):
            id
        }
    }

    /// Decodes one text message.
    ///
    /// The caller checks the size limit (``ErrorCode/tooLarge``) and UTF-8 validity
    /// at the WebSocket layer first; this checks everything else.
    /// - Parameter message: The whole text message.
    /// - Returns: The frame, or the ``ProtocolError`` to send back.
    public static func decode(_ message: ByteBuffer) -> Result<ClientFrame, ProtocolError> {
        let members: [JSONMember]
        do {
            members = try JSONScanner.topLevelMembers(of: Array(message.readableBytesView))
        } catch {
            switch error {
            case .notAnObject:
                return .failure(ProtocolError(.invalidMessage, "a frame must be a JSON object"))
            case .duplicateKey(let key):
                return .failure(ProtocolError(.invalidMessage, "member \"\(key)\" appears twice"))
            case .tooDeep:
                return .failure(ProtocolError(.invalidMessage, "JSON nests deeper than \(JSONScanner.maximumDepth) levels"))
            case .tooManyMembers:
                return .failure(ProtocolError(.invalidMessage, "a frame has at most \(JSONScanner.maximumMembers) members"))
            case .malformed(let offset):
                return .failure(ProtocolError(.invalidMessage, "malformed JSON at byte \(offset)"))
            }
        }
        var fields = Fields(members: members, message: message)

        let correlationID: CorrelationID?
        switch fields.correlationID() {
        case .success(let id): correlationID = id
        case .failure(let error): return .failure(error)
        }
        fields.correlationIDForErrors = correlationID

        guard let typeMember = fields.member("type") else {
            return .failure(ProtocolError(.invalidMessage, "missing field \"type\"", correlationID: correlationID))
        }
        guard let type = typeMember.stringValue else {
            return .failure(ProtocolError(.invalidMessage, "field \"type\" must be a string", correlationID: correlationID))
        }

        do throws(ProtocolError) {
            switch type {
            case "direct":
                let to = try fields.userID("to")
                return .success(.direct(to: to, data: try fields.data(), correlationID: correlationID))
            case "join":
                let room = try fields.roomID("room")
                let since = try fields.position("since", required: false)
                return .success(.join(room: room, since: since, presence: try fields.bool("presence"), correlationID: correlationID))
            case "presence":
                return .success(.presence(room: try fields.roomID("room"), correlationID: correlationID))
            case "resume":
                guard let since = try fields.position("since", required: true) else {
                    throw ProtocolError(.invalidMessage, "missing field \"since\"", correlationID: correlationID)
                }
                return .success(.resume(since: since, correlationID: correlationID))
            case "leave":
                return .success(.leave(room: try fields.roomID("room"), correlationID: correlationID))
            case "publish":
                let room = try fields.roomID("room")
                return .success(.publish(room: room, data: try fields.data(), correlationID: correlationID))
            case "ping":
                return .success(.ping(correlationID: correlationID))
            default:
                var shown = String(type.prefix(32))
                if shown.count < type.count { shown += "…" }
                return .failure(ProtocolError(.unknownType, "unknown type \"\(shown)\"", correlationID: correlationID))
            }
        } catch {
            return .failure(error)
        }
    }
}

/// Typed access to the members of a decoded frame, producing the documented errors.
struct Fields {
    let members: [JSONMember]
    let message: ByteBuffer
    var correlationIDForErrors: CorrelationID?

    init(members: [JSONMember], message: ByteBuffer) {
        self.members = members
        self.message = message
    }

    func member(_ key: String) -> JSONMember? {
        members.first { ExactUTF8.equal($0.key, key) }
    }

    func correlationID() -> Result<CorrelationID?, ProtocolError> {
        guard let member = member("id") else { return .success(nil) }
        guard member.kind == .string || member.kind == .number else {
            return .failure(ProtocolError(.invalidMessage, "field \"id\" must be a string or a number"))
        }
        guard member.range.count <= CorrelationID.maximumJSONLength else {
            return .failure(ProtocolError(.invalidMessage, "field \"id\" is longer than \(CorrelationID.maximumJSONLength) bytes"))
        }
        let text = message.getString(at: message.readerIndex + member.range.lowerBound, length: member.range.count) ?? ""
        return .success(CorrelationID(jsonText: text))
    }

    func string(_ key: String) throws(ProtocolError) -> String {
        guard let member = member(key) else {
            throw ProtocolError(.invalidMessage, "missing field \"\(key)\"", correlationID: correlationIDForErrors)
        }
        guard let value = member.stringValue else {
            throw ProtocolError(.invalidMessage, "field \"\(key)\" must be a string", correlationID: correlationIDForErrors)
        }
        return value
    }

    /// An optional `true`/`false` member; absent is false.
    func bool(_ key: String) throws(ProtocolError) -> Bool {
        guard let member = member(key) else { return false }
        guard member.kind == .bool else {
            throw ProtocolError(.invalidMessage, "field \"\(key)\" must be true or false", correlationID: correlationIDForErrors)
        }
        // The scanner checked the literal: a bool's text is `true` or `false`.
        return member.range.count == 4
    }

    func userID(_ key: String) throws(ProtocolError) -> UserID {
        let value = try string(key)
        do {
            return try UserID(validating: value)
        } catch {
            throw ProtocolError(.invalidID, "field \"\(key)\": \(error.explanation)", correlationID: correlationIDForErrors)
        }
    }

    func roomID(_ key: String) throws(ProtocolError) -> RoomID {
        let value = try string(key)
        do {
            return try RoomID(validating: value)
        } catch {
            throw ProtocolError(.invalidID, "field \"\(key)\": \(error.explanation)", correlationID: correlationIDForErrors)
        }
    }

    /// The largest offset accepted: JSON numbers above 2^53 are not exact in most clients.
    static let maximumOffset: UInt64 = (1 << 53) - 1

    /// `{"epoch":"E","offset":N}`: the epoch a string a store could have made, the offset
    /// an integer from 0 to 2^53 − 1 written without sign, fraction or exponent.
    func position(_ key: String, required: Bool) throws(ProtocolError) -> StreamPosition? {
        guard let member = member(key) else {
            if required { throw ProtocolError(.invalidMessage, "missing field \"\(key)\"", correlationID: correlationIDForErrors) }
            return nil
        }
        let shape = "field \"\(key)\" must be {\"epoch\": string, \"offset\": integer}"
        guard member.kind == .object, let bytes = message.getBytes(at: message.readerIndex + member.range.lowerBound, length: member.range.count),
            let inner = try? JSONScanner.topLevelMembers(of: bytes)
        else {
            throw ProtocolError(.invalidMessage, shape, correlationID: correlationIDForErrors)
        }
        guard let epochMember = inner.first(where: { ExactUTF8.equal($0.key, "epoch") }), let epoch = epochMember.stringValue,
            let offsetMember = inner.first(where: { ExactUTF8.equal($0.key, "offset") }), offsetMember.kind == .number
        else {
            throw ProtocolError(.invalidMessage, shape, correlationID: correlationIDForErrors)
        }
        guard StreamPosition.isValidEpoch(epoch) else {
            throw ProtocolError(
                .invalidMessage,
                "\(key).epoch must be 1…\(StreamPosition.maximumEpochLength) characters of A-Z a-z 0-9 - _",
                correlationID: correlationIDForErrors
            )
        }
        let digits = bytes[offsetMember.range]
        let isPlain =
            digits.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) } && (digits.count == 1 || digits.first != UInt8(ascii: "0"))
        guard isPlain, digits.count <= 16, let offset = UInt64(String(decoding: digits, as: UTF8.self)), offset <= Self.maximumOffset else {
            throw ProtocolError(
                .invalidMessage,
                "\(key).offset must be an integer from 0 to \(Self.maximumOffset)",
                correlationID: correlationIDForErrors
            )
        }
        return StreamPosition(epoch: epoch, offset: offset)
    }

    func data() throws(ProtocolError) -> ByteBuffer {
        guard let member = member("data") else {
            throw ProtocolError(.invalidMessage, "missing field \"data\"", correlationID: correlationIDForErrors)
        }
        // A slice shares the message's storage: `data` is never copied or re-encoded.
        return message.getSlice(at: message.readerIndex + member.range.lowerBound, length: member.range.count) ?? ByteBuffer()
    }
}

extension IdentifierError {
    /// Text for the client's `error` frame.
    public var explanation: String {
        switch self {
        case .empty: "an id must not be empty"
        case .tooLong(let length): "an id is at most \(Identifier.maximumUTF8Length) bytes of UTF-8, this one has \(length)"
        case .controlCharacter: "an id must not contain control characters"
        }
    }
}
