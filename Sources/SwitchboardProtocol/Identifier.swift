/// Why a string was refused as a user or room id.
public enum IdentifierError: Error, Sendable, Equatable {
    /// The id has no bytes.
    case empty
    /// The id is longer than ``Identifier/maximumUTF8Length`` bytes of UTF-8.
    case tooLong(utf8Length: Int)
    /// The id holds a control character (U+0000–U+001F or U+007F–U+009F).
    case controlCharacter
}

/// The rules that every user id and room id obeys (DESIGN.md, "AMQP topology").
///
/// An id is 1 to 128 bytes of UTF-8 with no control characters. Whatever else it
/// holds (dots, `*`, `#`, spaces, any script) is made safe for routing keys by
/// ``RoutingWord``, so a valid id can never reach a wildcard or another id's key.
public enum Identifier {
    /// The longest id, in bytes of UTF-8.
    public static let maximumUTF8Length = 128

    /// Checks `value` against the id rules.
    /// - Throws: ``IdentifierError`` naming the first rule broken.
    public static func validate(_ value: String) throws(IdentifierError) {
        let length = value.utf8.count
        if length == 0 { throw .empty }
        if length > maximumUTF8Length { throw .tooLong(utf8Length: length) }
        if value.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }) {
            throw .controlCharacter
        }
    }
}

/// A validated user id: the `sub` of a token, or `?user=` with `--auth none`.
public struct UserID: Hashable, Sendable, CustomStringConvertible {
    /// The id as the client wrote it.
    public let rawValue: String

    /// Validates `rawValue` against the id rules.
    /// - Throws: ``IdentifierError`` when the id breaks a rule.
    public init(validating rawValue: String) throws(IdentifierError) {
        try Identifier.validate(rawValue)
        self.rawValue = rawValue
    }

    public var description: String { rawValue }
}

/// A validated room id.
public struct RoomID: Hashable, Sendable, CustomStringConvertible {
    /// The id as the client wrote it.
    public let rawValue: String

    /// Validates `rawValue` against the id rules.
    /// - Throws: ``IdentifierError`` when the id breaks a rule.
    public init(validating rawValue: String) throws(IdentifierError) {
        try Identifier.validate(rawValue)
        self.rawValue = rawValue
    }

    public var description: String { rawValue }
}
