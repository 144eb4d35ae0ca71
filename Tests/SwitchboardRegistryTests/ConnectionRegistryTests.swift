import SwitchboardProtocol
import SwitchboardRegistry
import Testing

@Suite("Connection registry")
struct ConnectionRegistryTests {
    let alice = try! UserID(validating: "alice")
    let lobby = try! RoomID(validating: "lobby")
    let games = try! RoomID(validating: "games")

    @Test("a user becomes local on the first connection and stops on the last")
    func userTransitions() {
        let registry = ConnectionRegistry<String>()
        let one = ConnectionID.next()
        let two = ConnectionID.next()
        #expect(registry.add(one, user: alice, handle: "1") == RegistryChange(becameLocal: [.user(alice)]))
        #expect(registry.add(two, user: alice, handle: "2").isEmpty)
        #expect(Set(registry.handles(for: .user(alice))) == ["1", "2"])
        #expect(registry.remove(one).isEmpty)
        #expect(registry.isLocal(.user(alice)))
        #expect(registry.remove(two) == RegistryChange(noLongerLocal: [.user(alice)]))
        #expect(!registry.isLocal(.user(alice)))
        #expect(registry.remove(two).isEmpty)
    }

    @Test("rooms follow their members; closing a connection leaves every room")
    func roomTransitions() {
        let registry = ConnectionRegistry<Int>()
        let one = ConnectionID.next()
        let two = ConnectionID.next()
        _ = registry.add(one, user: alice, handle: 1)
        _ = registry.add(two, user: try! UserID(validating: "bob"), handle: 2)
        #expect(registry.join(one, room: lobby) == .joined(roomBecameLocal: true))
        #expect(registry.join(one, room: lobby) == .alreadyMember)
        #expect(registry.join(one, room: games) == .joined(roomBecameLocal: true))
        #expect(registry.join(two, room: lobby) == .joined(roomBecameLocal: false))
        #expect(registry.isMember(one, of: games))
        #expect(!registry.isMember(two, of: games))
        #expect(Set(registry.handles(for: .room(lobby))) == [1, 2])

        let change = registry.remove(one)
        #expect(Set(change.noLongerLocal) == [.user(alice), .room(games)])
        #expect(Set(change.endedMemberships) == [lobby, games], "presence counts every membership the close ended")
        #expect(registry.isLocal(.room(lobby)))
        #expect(registry.handles(for: .room(lobby)) == [2])
        let left = registry.leave(two, room: lobby)
        #expect(left.noLongerLocal == [.room(lobby)] && left.endedMemberships == [lobby])
        #expect(registry.leave(two, room: lobby) == RegistryChange(), "a second leave ends no membership")
        #expect(registry.counts == (1, 1, 0))
    }

    @Test("the room limit per connection holds and unknown connections cannot join")
    func limits() {
        let registry = ConnectionRegistry<Int>()
        let one = ConnectionID.next()
        _ = registry.add(one, user: alice, handle: 1)
        #expect(registry.join(one, room: lobby, maximumRooms: 1) == .joined(roomBecameLocal: true))
        #expect(registry.join(one, room: games, maximumRooms: 1) == .tooManyRooms)
        #expect(registry.join(ConnectionID.next(), room: games) == .unknownConnection)
        #expect(!registry.isLocal(.room(games)))
    }
}

@Suite("Connection registry: leaving connections (drain)")
struct LeavingConnectionTests {
    let alice = try! UserID(validating: "alice")
    let lobby = try! RoomID(validating: "lobby")

    @Test("a leaving connection still receives but no longer keeps its user and rooms local")
    func leaving() {
        let registry = ConnectionRegistry<Int>()
        let one = ConnectionID.next()
        let two = ConnectionID.next()
        _ = registry.add(one, user: alice, handle: 1)
        _ = registry.add(two, user: alice, handle: 2)
        _ = registry.join(one, room: lobby)

        // `two` still keeps alice local; the room had only `one`.
        #expect(registry.markLeaving(one) == RegistryChange(noLongerLocal: [.room(lobby)]))
        #expect(registry.markLeaving(one).isEmpty)
        #expect(registry.isLocal(.user(alice)))
        #expect(!registry.isLocal(.room(lobby)))
        #expect(registry.handles(for: .room(lobby)) == [1], "deliveries still reach the leaving connection")
        #expect(registry.join(one, room: try! RoomID(validating: "other")) == .connectionLeaving)

        #expect(registry.markLeaving(two) == RegistryChange(noLongerLocal: [.user(alice)]))
        #expect(Set(registry.handles(for: .user(alice))) == [1, 2])
        // Removing connections that were leaving changes nothing more.
        #expect(registry.remove(one).isEmpty)
        #expect(registry.remove(two).isEmpty)
        #expect(registry.counts == (0, 0, 0))
    }

    @Test("a new connection while another of the same user leaves makes the user local again")
    func rejoin() {
        let registry = ConnectionRegistry<Int>()
        let old = ConnectionID.next()
        _ = registry.add(old, user: alice, handle: 1)
        _ = registry.markLeaving(old)
        #expect(registry.add(ConnectionID.next(), user: alice, handle: 2) == RegistryChange(becameLocal: [.user(alice)]))
        #expect(registry.remove(old).isEmpty)
        #expect(registry.isLocal(.user(alice)))
    }
}

@Suite("Connection registry: presence subscribers")
struct PresenceSubscriberTests {
    let alice = try! UserID(validating: "alice")
    let lobby = try! RoomID(validating: "lobby")

    @Test("only members subscribe; a leave, a close or a join without events ends it")
    func subscribers() {
        let registry = ConnectionRegistry<Int>()
        let one = ConnectionID.next()
        let two = ConnectionID.next()
        _ = registry.add(one, user: alice, handle: 1)
        _ = registry.add(two, user: alice, handle: 2)
        registry.setPresenceEvents(one, room: lobby, wanted: true)
        #expect(registry.presenceHandles(for: lobby).isEmpty, "not a member yet")
        _ = registry.join(one, room: lobby)
        _ = registry.join(two, room: lobby)
        registry.setPresenceEvents(one, room: lobby, wanted: true)
        registry.setPresenceEvents(two, room: lobby, wanted: true)
        #expect(Set(registry.presenceHandles(for: lobby)) == [1, 2])
        registry.setPresenceEvents(two, room: lobby, wanted: false)
        #expect(registry.presenceHandles(for: lobby) == [1])
        _ = registry.leave(one, room: lobby)
        #expect(registry.presenceHandles(for: lobby).isEmpty)
        _ = registry.join(one, room: lobby)
        #expect(registry.presenceHandles(for: lobby).isEmpty, "a new membership starts without events")
        registry.setPresenceEvents(one, room: lobby, wanted: true)
        _ = registry.remove(one)
        #expect(registry.presenceHandles(for: lobby).isEmpty)
    }
}
