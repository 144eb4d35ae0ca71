/// Why a string was refused as a user or room id.
public enum IdentifierError: Error, Sendable, Equatable {
    /// The id has no bytes.
    case empty
    /// The id is longer than ``Identifier/maximumUTF8Length`` bytes of UTF-8.
    case tooLong(utf8Length: Int)
    /// The id holds a control character (U+0000–U+001F or U+007F–U+009F).
    case controlCharacter
}

/// The rules that every user id and room id obeys (docs/protocol.md, "Identifiers").
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
///
/// Equality and hashing use the exact UTF-8 bytes, never Swift's `String` comparison
/// (which treats canonically equivalent strings, such as "\u{212A}" KELVIN SIGN and "K",
/// as equal): the broker routes by bytes, so the gateway must tell apart every id the
/// broker tells apart.
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

    public static func == (lhs: Self, rhs: Self) -> Bool { ExactUTF8.equal(lhs.rawValue, rhs.rawValue) }

    public func hash(into hasher: inout Hasher) { ExactUTF8.hash(rawValue, into: &hasher) }
}

/// A validated room id.
///
/// Equality and hashing use the exact UTF-8 bytes, never Swift's `String` comparison
/// (which treats canonically equivalent strings, such as "\u{212A}" KELVIN SIGN and "K",
/// as equal): the broker routes by bytes, so the gateway must tell apart every id the
/// broker tells apart.
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

    public static func == (lhs: Self, rhs: Self) -> Bool { ExactUTF8.equal(lhs.rawValue, rhs.rawValue) }

    public func hash(into hasher: inout Hasher) { ExactUTF8.hash(rawValue, into: &hasher) }
}

/// A string compared and hashed by its exact UTF-8 bytes.
///
/// Swift's `String` `==` and `hashValue` follow Unicode canonical equivalence, so
/// "\u{00E9}" and "e\u{0301}" are one dictionary key. Anything keyed by an id from the
/// wire (registry maps, binding sets, room rules, JSON member names) uses this instead.
public struct ExactUTF8: Hashable, Sendable, CustomStringConvertible {
    public let value: String

    public init(_ value: String) {
        self.value = value
    }

    public var description: String { value }

    public static func == (lhs: Self, rhs: Self) -> Bool { equal(lhs.value, rhs.value) }

    public func hash(into hasher: inout Hasher) { Self.hash(value, into: &hasher) }

    /// Whether `lhs` and `rhs` have the same UTF-8 bytes.
    @inlinable
    public static func equal(_ lhs: String, _ rhs: String) -> Bool {
        lhs.utf8.count == rhs.utf8.count && lhs.utf8.elementsEqual(rhs.utf8)
    }

    /// Feeds the UTF-8 bytes of `value` to `hasher`.
    @inlinable
    public static func hash(_ value: String, into hasher: inout Hasher) {
        hasher.combine(value.utf8.count)
        for byte in value.utf8 { hasher.combine(byte) }
    }

    /// Whether the UTF-8 bytes of `value` begin with those of `prefix`.
    @inlinable
    public static func hasPrefix(_ value: String, _ prefix: String) -> Bool {
        value.utf8.starts(with: prefix.utf8)
    }
}
