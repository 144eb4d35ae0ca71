import SwitchboardProtocol

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What an `ack` (or `pong`) carries besides its `id`; every member is optional, and one
/// that is missing or of the wrong type reads as absent.
struct Acknowledgement: Sendable, Hashable {
    /// A `join`'s, `resume`'s or `join` with `since`'s stream top (history on).
    var position: GatewayClient.StreamPosition?
    /// Whether a `resume` or `join` with `since` replayed everything after `since`.
    var recovered: Bool?
    /// Why it did not (`epoch_changed`, `expired`, `limit_exceeded`, `ahead`).
    var reason: String?
    /// A direct message's offset in the recipient's user stream.
    var offset: Int?
    /// A direct message whose recipient is connected nowhere was kept for it.
    var recipientOffline = false
    /// The answer to a `presence` request.
    var presence: GatewayClient.Presence?
}

/// A frame from the gateway, as ``GatewayClient`` reads it.
///
/// Parsed with SwitchboardProtocol's `JSONScanner`, the validating scanner the gateway
/// itself uses: it yields each top-level member's exact byte range, so `data` reaches
/// the application as the exact JSON text the sender wrote (numbers, escapes and
/// spacing unchanged), which a decode-and-re-encode with JSONSerialization would not keep.
///
/// The history members (docs/protocol.md; `position`, `offset`, `epoch`, `recovered`, …)
/// are optional: one that is missing or malformed reads as absent, so a frame from a
/// gateway with history off, or a half-broken one, is still the frame it was before.
enum IncomingFrame: Equatable {
    case welcome(user: String, gateway: String, position: GatewayClient.StreamPosition? = nil)
    /// `ack` and `pong` both answer a request; `id` as a string, or the raw text of a non-string id.
    case reply(id: String?, Acknowledgement = Acknowledgement())
    case error(id: String?, code: String, message: String)
    /// `position` is the recipient's (this user's) user stream position of the message.
    case direct(from: String, to: String, data: String, position: GatewayClient.StreamPosition? = nil)
    /// `position` is the room stream's position of the message.
    case room(room: String, from: String, data: String, position: GatewayClient.StreamPosition? = nil)
    case broadcast(from: String, data: String)
    /// `joined` (`isJoin`) or `left` in a room joined with presence events.
    case presenceEvent(isJoin: Bool, room: String, user: String)
    /// Valid JSON, but a type this client does not know, or a known type missing a member.
    case unknown

    /// Reads one text frame; nil when it is not a JSON object.
    init?(text: String) {
        let bytes = Array(text.utf8)
        guard let members = try? JSONScanner.topLevelMembers(of: bytes) else { return nil }
        let object = FrameObject(bytes: bytes, members: members)
        func string(_ key: String) -> String? { object.string(key) }
        func rawText(_ key: String) -> String? { object.rawText(key) }
        func id() -> String? {
            guard let member = members.first(where: { $0.key == "id" }) else { return nil }
            return member.stringValue ?? String(decoding: bytes[member.range], as: UTF8.self)
        }
        /// `offset` and `epoch` of a direct or room frame, both or neither.
        func messagePosition() -> GatewayClient.StreamPosition? {
            guard let epoch = string("epoch"), let offset = object.count("offset") else { return nil }
            return GatewayClient.StreamPosition(epoch: epoch, offset: offset)
        }
        switch string("type") {
        case "welcome":
            guard let user = string("user"), let gateway = string("gateway") else {
                self = .unknown
                return
            }
            self = .welcome(user: user, gateway: gateway, position: object.position("position"))
        case "ack", "pong":
            let ack = Acknowledgement(
                position: object.position("position"),
                recovered: object.bool("recovered"),
                reason: string("reason"),
                offset: object.count("offset"),
                recipientOffline: object.bool("recipient_offline") ?? false
            )
            self = .reply(id: id(), ack)
        case "error":
            self = .error(id: id(), code: string("code") ?? SwitchboardClientError.Code.internal.rawValue, message: string("message") ?? "")
        case "direct":
            guard let from = string("from"), let to = string("to"), let data = rawText("data") else {
                self = .unknown
                return
            }
            self = .direct(from: from, to: to, data: data, position: messagePosition())
        case "room":
            guard let room = string("room"), let from = string("from"), let data = rawText("data") else {
                self = .unknown
                return
            }
            self = .room(room: room, from: from, data: data, position: messagePosition())
        case "broadcast":
            guard let from = string("from"), let data = rawText("data") else {
                self = .unknown
                return
            }
            self = .broadcast(from: from, data: data)
        case "presence":
            var ack = Acknowledgement()
            ack.presence = object.presence()
            self = .reply(id: id(), ack)
        case "joined", "left":
            guard let room = string("room"), let user = string("user") else {
                self = .unknown
                return
            }
            self = .presenceEvent(isJoin: string("type") == "joined", room: room, user: user)
        default:
            self = .unknown
        }
    }
}

/// The members of one scanned JSON object, read by key; a member of the wrong kind reads as nil.
private struct FrameObject {
    let bytes: [UInt8]
    let members: [JSONMember]

    private func member(_ key: String) -> JSONMember? {
        members.first { $0.key == key }
    }

    func string(_ key: String) -> String? {
        member(key)?.stringValue
    }

    func rawText(_ key: String) -> String? {
        guard let member = member(key) else { return nil }
        return String(decoding: bytes[member.range], as: UTF8.self)
    }

    func bool(_ key: String) -> Bool? {
        guard let member = member(key), member.kind == .bool else { return nil }
        return bytes[member.range.lowerBound] == UInt8(ascii: "t")
    }

    /// A non-negative integer written as plain digits: `7`, not `7.0`, `-1` or `1e3`, and
    /// not past `Int.max`, since an offset is a count.
    func count(_ key: String) -> Int? {
        guard let member = member(key), member.kind == .number else { return nil }
        let digits = bytes[member.range]
        guard digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return Int(String(decoding: digits, as: UTF8.self))
    }

    /// The `users`, `count` and `truncated` of a `presence` answer; users of the wrong shape are skipped.
    func presence() -> GatewayClient.Presence? {
        guard let count = count("count"), let member = member("users"), member.kind == .array else { return nil }
        let list = Array(bytes[member.range])
        guard let elements = try? JSONScanner.arrayElements(of: list) else { return nil }
        var users: [GatewayClient.Presence.User] = []
        for range in elements {
            let element = Array(list[range])
            guard let inner = try? JSONScanner.topLevelMembers(of: element) else { continue }
            let object = FrameObject(bytes: element, members: inner)
            guard let user = object.string("user"), let connections = object.count("connections") else { continue }
            users.append(GatewayClient.Presence.User(user: user, connections: connections))
        }
        return GatewayClient.Presence(users: users, count: count, truncated: bool("truncated") ?? false)
    }

    /// `{"epoch":"E","offset":N}`; nil unless both are there and well-typed.
    func position(_ key: String) -> GatewayClient.StreamPosition? {
        guard let member = member(key), member.kind == .object else { return nil }
        let text = Array(bytes[member.range])
        guard let inner = try? JSONScanner.topLevelMembers(of: text) else { return nil }
        let object = FrameObject(bytes: text, members: inner)
        guard let epoch = object.string("epoch"), let offset = object.count("offset") else { return nil }
        return GatewayClient.StreamPosition(epoch: epoch, offset: offset)
    }
}

/// The frames ``GatewayClient`` sends (wire protocol v1, docs/protocol.md).
enum OutgoingFrame {
    static func direct(to user: String, data: String, id: String) -> String {
        var text = #"{"type":"direct","to":"#
        JSONText.appendQuoted(user, to: &text)
        text += #","data":"# + data
        return finish(text, id: id)
    }

    static func publish(room: String, data: String, id: String) -> String {
        var text = #"{"type":"publish","room":"#
        JSONText.appendQuoted(room, to: &text)
        text += #","data":"# + data
        return finish(text, id: id)
    }

    /// A `join`; with `since`, it also asks for the room's messages after that position,
    /// with `presence`, for its `joined` / `left` events.
    static func join(room: String, since: GatewayClient.StreamPosition? = nil, presence: Bool = false, id: String) -> String {
        var text = #"{"type":"join","room":"#
        JSONText.appendQuoted(room, to: &text)
        if let since { appendSince(since, to: &text) }
        if presence { text += #","presence":true"# }
        return finish(text, id: id)
    }

    static func presence(room: String, id: String) -> String {
        var text = #"{"type":"presence","room":"#
        JSONText.appendQuoted(room, to: &text)
        return finish(text, id: id)
    }

    /// Asks for this user's direct messages after `since`.
    static func resume(since: GatewayClient.StreamPosition, id: String) -> String {
        var text = #"{"type":"resume""#
        appendSince(since, to: &text)
        return finish(text, id: id)
    }

    private static func appendSince(_ since: GatewayClient.StreamPosition, to text: inout String) {
        text += #","since":{"epoch":"#
        JSONText.appendQuoted(since.epoch, to: &text)
        text += #","offset":\#(since.offset)}"#
    }

    static func leave(room: String, id: String) -> String {
        var text = #"{"type":"leave","room":"#
        JSONText.appendQuoted(room, to: &text)
        return finish(text, id: id)
    }

    static func ping(id: String) -> String {
        finish(#"{"type":"ping""#, id: id)
    }

    private static func finish(_ head: String, id: String) -> String {
        var text = head + #","id":"#
        JSONText.appendQuoted(id, to: &text)
        return text + "}"
    }

    /// Checks that `json` is exactly one JSON value, by the gateway's own rules, so that a
    /// bad `data` fails here with the request's error instead of as an id-less
    /// `invalid_message` from the gateway that no request would match.
    static func validated(json: String) throws(SwitchboardClientError) -> String {
        let prefix = #"{"data":"#
        let wrapped = Array((prefix + json + "}").utf8)
        let members: [JSONMember]
        do {
            members = try JSONScanner.topLevelMembers(of: wrapped)
        } catch {
            throw SwitchboardClientError(code: .invalidMessage, message: "data is not valid JSON: \(json.prefix(80))", cause: error)
        }
        // `1},"x":{` would wrap into a valid object of two members: only one value may be there.
        let dataRange = prefix.utf8.count..<(wrapped.count - 1)
        guard members.count == 1, members[0].range == trimmed(wrapped, dataRange) else {
            throw SwitchboardClientError(code: .invalidMessage, message: "data is not one JSON value: \(json.prefix(80))")
        }
        return json
    }

    /// `range` without the JSON white space at either end.
    private static func trimmed(_ bytes: [UInt8], _ range: Range<Int>) -> Range<Int> {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        var lower = range.lowerBound
        var upper = range.upperBound
        while lower < upper, isSpace(bytes[lower]) { lower += 1 }
        while upper > lower, isSpace(bytes[upper - 1]) { upper -= 1 }
        return lower..<upper
    }

    /// Encodes `value` with `JSONEncoder` into the text of a `data` member.
    static func encoded(_ value: some Encodable) throws(SwitchboardClientError) -> String {
        do {
            return String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
        } catch {
            throw SwitchboardClientError(code: .invalidMessage, message: "data could not be encoded as JSON: \(error)", cause: error)
        }
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters, for a query value.
    static func percentEncoded(_ value: String) -> String {
        let hexDigits = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                bytes.append(byte)
            default:
                bytes.append(contentsOf: [UInt8(ascii: "%"), hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0x0F)]])
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
