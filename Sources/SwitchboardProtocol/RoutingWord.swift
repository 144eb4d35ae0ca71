/// Turns a validated id into one word of an AMQP routing key (or a Redis channel suffix).
///
/// An id made only of `[A-Za-z0-9_-]` is its own word. Any other id becomes `~`
/// followed by the unpadded base64url of its UTF-8 bytes, an alphabet that has no
/// `.`, `*` or `#`, so a word is always exactly one routing-key word and never a
/// wildcard. `~` cannot start a plain word, so the two forms never collide.
public enum RoutingWord {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// The routing word for a user id.
    public static func encode(_ id: UserID) -> String { encode(rawID: id.rawValue) }

    /// The routing word for a room id.
    public static func encode(_ id: RoomID) -> String { encode(rawID: id.rawValue) }

    /// The routing word for any string; callers pass validated ids.
    public static func encode(rawID: String) -> String {
        if isPlain(rawID) { return rawID }
        return "~" + base64URL(Array(rawID.utf8))
    }

    /// Reverses ``encode(rawID:)``; `nil` when `word` is not a word this type produces.
    public static func decode(_ word: String) -> String? {
        guard word.utf8.first == UInt8(ascii: "~") else {
            return !word.isEmpty && isPlain(word) ? word : nil
        }
        guard let bytes = decodeBase64URL(word.utf8.dropFirst()) else { return nil }
        return String(validating: bytes, as: UTF8.self)
    }

    static func isPlain(_ value: String) -> Bool {
        value.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
                true
            default:
                false
            }
        }
    }

    static func base64URL(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var index = 0
        while index + 3 <= bytes.count {
            let chunk = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            out.append(alphabet[Int(chunk >> 18 & 63)])
            out.append(alphabet[Int(chunk >> 12 & 63)])
            out.append(alphabet[Int(chunk >> 6 & 63)])
            out.append(alphabet[Int(chunk & 63)])
            index += 3
        }
        let rest = bytes.count - index
        if rest == 1 {
            let chunk = UInt32(bytes[index]) << 16
            out.append(alphabet[Int(chunk >> 18 & 63)])
            out.append(alphabet[Int(chunk >> 12 & 63)])
        } else if rest == 2 {
            let chunk = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8
            out.append(alphabet[Int(chunk >> 18 & 63)])
            out.append(alphabet[Int(chunk >> 12 & 63)])
            out.append(alphabet[Int(chunk >> 6 & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decodeBase64URL(_ text: Substring.UTF8View) -> [UInt8]? {
        var values = [UInt8]()
        values.reserveCapacity(text.count)
        for byte in text {
            guard let value = alphabet.firstIndex(of: byte) else { return nil }
            values.append(UInt8(value))
        }
        if values.count % 4 == 1 { return nil }
        var out = [UInt8]()
        var index = 0
        while index < values.count {
            let group = values[index..<min(index + 4, values.count)]
            var chunk: UInt32 = 0
            for (offset, value) in group.enumerated() { chunk |= UInt32(value) << (18 - 6 * offset) }
            out.append(UInt8(chunk >> 16 & 0xFF))
            if group.count > 2 { out.append(UInt8(chunk >> 8 & 0xFF)) }
            if group.count > 3 { out.append(UInt8(chunk & 0xFF)) }
            index += 4
        }
        return out
    }
}
