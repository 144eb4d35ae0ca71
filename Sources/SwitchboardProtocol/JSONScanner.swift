/// Why a byte sequence is not the JSON object a client frame must be.
public enum JSONScanError: Error, Sendable, Equatable {
    /// The bytes are not one well-formed JSON value (RFC 8259), or not valid UTF-8.
    case malformed(offset: Int)
    /// The value is well-formed but is not an object.
    case notAnObject
    /// The object names the same member twice.
    case duplicateKey(String)
    /// Arrays and objects nest deeper than ``JSONScanner/maximumDepth``.
    case tooDeep
    /// The top-level object has more than ``JSONScanner/maximumMembers`` members.
    case tooManyMembers
}

/// The kind of a JSON value, as far as the frame decoder cares.
public enum JSONValueKind: Sendable, Equatable {
    case object, array, string, number, bool, null
}

/// One member of the top-level object: its key, what kind of value it holds and
/// where that value's text lies in the input.
public struct JSONMember: Sendable, Equatable {
    public var key: String
    public var kind: JSONValueKind
    /// Byte offsets of the value's exact text in the input (quotes included for strings).
    public var range: Range<Int>
    /// The decoded text when ``kind`` is `.string`.
    public var stringValue: String?
}

/// A validating JSON scanner that returns the members of a top-level object
/// without building values for them.
///
/// The gateway never re-encodes `data`: it checks that the whole frame is valid
/// JSON, then copies the exact bytes of `data` into the recipients' frame. Only
/// top-level strings (`type`, `to`, `room`, `id`) are decoded.
public struct JSONScanner {
    /// The deepest nesting of arrays and objects accepted, to bound the work per frame.
    public static let maximumDepth = 64
    /// The most members the top-level object may have. A frame needs at most six; without
    /// a bound, 64 KiB of distinct short names costs milliseconds of event-loop time each.
    public static let maximumMembers = 64

    private let bytes: [UInt8]
    private var index = 0

    private init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// Scans `bytes`, which must hold exactly one JSON object and optional white space.
    /// - Returns: The object's members, in the order they appear.
    /// - Throws: ``JSONScanError`` when the text is not such an object.
    public static func topLevelMembers(of bytes: [UInt8]) throws(JSONScanError) -> [JSONMember] {
        var scanner = JSONScanner(bytes: bytes)
        scanner.skipWhitespace()
        guard scanner.peek() == UInt8(ascii: "{") else {
            // Tell "valid JSON but not an object" apart from garbage.
            _ = try scanner.scanValue(depth: 0)
            scanner.skipWhitespace()
            guard scanner.index == bytes.count else { throw .malformed(offset: scanner.index) }
            throw .notAnObject
        }
        let members = try scanner.scanObject(depth: 0, collect: true)
        scanner.skipWhitespace()
        guard scanner.index == bytes.count else { throw .malformed(offset: scanner.index) }
        return members
    }

    /// Scans `bytes`, which must hold exactly one JSON array and optional white space.
    /// - Returns: The byte range of each element's exact text, in order.
    /// - Throws: ``JSONScanError`` when the text is not such an array.
    public static func arrayElements(of bytes: [UInt8]) throws(JSONScanError) -> [Range<Int>] {
        var scanner = JSONScanner(bytes: bytes)
        scanner.skipWhitespace()
        let elements = try scanner.scanArray(depth: 0, collect: true)
        scanner.skipWhitespace()
        guard scanner.index == bytes.count else { throw .malformed(offset: scanner.index) }
        return elements
    }

    private func peek() -> UInt8? {
        index < bytes.count ? bytes[index] : nil
    }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    private mutating func expect(_ byte: UInt8) throws(JSONScanError) {
        guard peek() == byte else { throw .malformed(offset: index) }
        index += 1
    }

    /// Scans one value and returns its kind; `index` ends just past it.
    private mutating func scanValue(depth: Int) throws(JSONScanError) -> JSONValueKind {
        guard let byte = peek() else { throw .malformed(offset: index) }
        switch byte {
        case UInt8(ascii: "{"):
            _ = try scanObject(depth: depth + 1, collect: false)
            return .object
        case UInt8(ascii: "["):
            _ = try scanArray(depth: depth + 1, collect: false)
            return .array
        case UInt8(ascii: "\""):
            try scanString(decode: false)
            return .string
        case UInt8(ascii: "t"):
            try scanLiteral("true")
            return .bool
        case UInt8(ascii: "f"):
            try scanLiteral("false")
            return .bool
        case UInt8(ascii: "n"):
            try scanLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            try scanNumber()
            return .number
        default:
            throw .malformed(offset: index)
        }
    }

    private mutating func scanLiteral(_ literal: StaticString) throws(JSONScanError) {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw .malformed(offset: index) }
        let matches = literal.withUTF8Buffer { expected in
            expected.indices.allSatisfy { expected[$0] == bytes[index + $0] }
        }
        guard matches else { throw .malformed(offset: index) }
        index += count
    }

    private mutating func scanNumber() throws(JSONScanError) {
        let start = index
        if peek() == UInt8(ascii: "-") { index += 1 }
        guard let first = peek(), isDigit(first) else { throw .malformed(offset: index) }
        if first == UInt8(ascii: "0") {
            index += 1
        } else {
            while let byte = peek(), isDigit(byte) { index += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            index += 1
            guard let byte = peek(), isDigit(byte) else { throw .malformed(offset: index) }
            while let byte = peek(), isDigit(byte) { index += 1 }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            index += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
            guard let byte = peek(), isDigit(byte) else { throw .malformed(offset: index) }
            while let byte = peek(), isDigit(byte) { index += 1 }
        }
        if index == start { throw .malformed(offset: index) }
    }

    private func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    /// Scans an array; returns its elements' ranges when `collect` is true.
    private mutating func scanArray(depth: Int, collect: Bool) throws(JSONScanError) -> [Range<Int>] {
        guard depth <= Self.maximumDepth else { throw .tooDeep }
        try expect(UInt8(ascii: "["))
        var elements: [Range<Int>] = []
        skipWhitespace()
        if peek() == UInt8(ascii: "]") {
            index += 1
            return elements
        }
        while true {
            skipWhitespace()
            let start = index
            _ = try scanValue(depth: depth)
            if collect { elements.append(start..<index) }
            skipWhitespace()
            guard let byte = peek() else { throw .malformed(offset: index) }
            index += 1
            if byte == UInt8(ascii: "]") { return elements }
            guard byte == UInt8(ascii: ",") else { throw .malformed(offset: index - 1) }
        }
    }

    private mutating func scanObject(depth: Int, collect: Bool) throws(JSONScanError) -> [JSONMember] {
        guard depth <= Self.maximumDepth else { throw .tooDeep }
        try expect(UInt8(ascii: "{"))
        var members: [JSONMember] = []
        // Member names seen, by exact bytes. A frame has a handful: comparing with each
        // is cheapest, and past a few the check switches to a set, so it stays linear.
        var names: Set<ExactUTF8> = []
        let linearUpTo = 8
        skipWhitespace()
        if peek() == UInt8(ascii: "}") {
            index += 1
            return members
        }
        while true {
            skipWhitespace()
            guard peek() == UInt8(ascii: "\"") else { throw .malformed(offset: index) }
            let key = try scanString(decode: collect)
            skipWhitespace()
            try expect(UInt8(ascii: ":"))
            skipWhitespace()
            let start = index
            if collect, let key {
                let isString = peek() == UInt8(ascii: "\"")
                var decoded: String?
                let kind: JSONValueKind
                if isString {
                    decoded = try scanString(decode: true)
                    kind = .string
                } else {
                    kind = try scanValue(depth: depth)
                }
                if members.count < linearUpTo {
                    if members.contains(where: { ExactUTF8.equal($0.key, key) }) { throw .duplicateKey(key) }
                } else {
                    if names.isEmpty { names = Set(members.map { ExactUTF8($0.key) }) }
                    guard names.insert(ExactUTF8(key)).inserted else { throw .duplicateKey(key) }
                }
                members.append(JSONMember(key: key, kind: kind, range: start..<index, stringValue: decoded))
                guard members.count <= Self.maximumMembers else { throw .tooManyMembers }
            } else {
                _ = try scanValue(depth: depth)
            }
            skipWhitespace()
            guard let byte = peek() else { throw .malformed(offset: index) }
            index += 1
            if byte == UInt8(ascii: "}") { return members }
            guard byte == UInt8(ascii: ",") else { throw .malformed(offset: index - 1) }
        }
    }

    /// Scans a string; returns its decoded text when `decode` is true.
    @discardableResult
    private mutating func scanString(decode: Bool) throws(JSONScanError) -> String? {
        try expect(UInt8(ascii: "\""))
        var decoded: [UInt8] = []
        var pendingHighSurrogate: UInt32?
        let start = index
        while true {
            guard let byte = peek() else { throw .malformed(offset: index) }
            if byte == UInt8(ascii: "\"") {
                guard pendingHighSurrogate == nil else { throw .malformed(offset: index) }
                index += 1
                break
            }
            if byte < 0x20 { throw .malformed(offset: index) }
            if byte == UInt8(ascii: "\\") {
                index += 1
                guard let escape = peek() else { throw .malformed(offset: index) }
                index += 1
                if escape == UInt8(ascii: "u") {
                    let unit = try scanHex4()
                    if let high = pendingHighSurrogate {
                        guard (0xDC00...0xDFFF).contains(unit) else { throw .malformed(offset: index) }
                        pendingHighSurrogate = nil
                        appendScalar(0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00), to: &decoded)
                    } else if (0xD800...0xDBFF).contains(unit) {
                        pendingHighSurrogate = unit
                    } else if (0xDC00...0xDFFF).contains(unit) {
                        throw .malformed(offset: index)
                    } else {
                        appendScalar(unit, to: &decoded)
                    }
                    continue
                }
                guard pendingHighSurrogate == nil else { throw .malformed(offset: index) }
                let unescaped: UInt8
                switch escape {
                case UInt8(ascii: "\""): unescaped = UInt8(ascii: "\"")
                case UInt8(ascii: "\\"): unescaped = UInt8(ascii: "\\")
                case UInt8(ascii: "/"): unescaped = UInt8(ascii: "/")
                case UInt8(ascii: "b"): unescaped = 0x08
                case UInt8(ascii: "f"): unescaped = 0x0C
                case UInt8(ascii: "n"): unescaped = 0x0A
                case UInt8(ascii: "r"): unescaped = 0x0D
                case UInt8(ascii: "t"): unescaped = 0x09
                default: throw .malformed(offset: index - 1)
                }
                decoded.append(unescaped)
                continue
            }
            guard pendingHighSurrogate == nil else { throw .malformed(offset: index) }
            decoded.append(byte)
            index += 1
        }
        // Raw bytes of the string must be valid UTF-8 whether or not we keep the text.
        guard let text = String(validating: decoded, as: UTF8.self) else { throw .malformed(offset: start) }
        return decode ? text : nil
    }

    private mutating func scanHex4() throws(JSONScanError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw .malformed(offset: index) }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt32
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
            default: throw .malformed(offset: index)
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }

    private func appendScalar(_ value: UInt32, to output: inout [UInt8]) {
        guard let scalar = Unicode.Scalar(value) else { return }
        output.append(contentsOf: scalar.utf8)
    }
}
