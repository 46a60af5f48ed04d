"""h2's connection and stream state machines, their transitions looked up by int keys."""

from __future__ import annotations

from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.events import Event
from h2.exceptions import ProtocolError
from h2.stream import H2StreamStateMachine, StreamInputs, StreamState
from h2.stream import _transitions as _stream_transitions

# h2 keys its tables by (state, input) Enum members, and a plain Enum member hashes in Python
# (`Enum.__hash__`): one or two such calls per transition, ~16 transitions per proxied
# request. The same tables here, keyed by the members' int values (IntEnum states as such).
_CONNECTION = {(state._value_, input_._value_): step
               for (state, input_), step in H2ConnectionStateMachine._transitions.items()}
_STREAM = {(state, input_._value_): step for (state, input_), step in _stream_transitions.items()}


class ConnectionStateMachine(H2ConnectionStateMachine):
    """h2's, transitions looked up in `_CONNECTION`."""

    def process_input(self, input_: ConnectionInputs) -> list[Event]:
        if not isinstance(input_, ConnectionInputs):
            raise ValueError("Input must be an instance of ConnectionInputs")
        try:
            func, target_state = _CONNECTION[(self.state._value_, input_._value_)]
        except KeyError as e:
            old_state = self.state
            self.state = ConnectionState.CLOSED
            raise ProtocolError(f"Invalid input {input_} in state {old_state}") from e
        self.state = target_state
        if func is not None:  # (none in h2's table)
            return func()
        return []


class StreamStateMachine(H2StreamStateMachine):
    """h2's, transitions looked up in `_STREAM`."""

    def process_input(self, input_: StreamInputs) -> list[Event]:
        if not isinstance(input_, StreamInputs):
            raise ValueError("Input must be an instance of StreamInputs")
        try:
            func, target_state = _STREAM[(self.state, input_._value_)]
        except KeyError as err:
            old_state = self.state
            self.state = StreamState.CLOSED
            raise ProtocolError(f"Invalid input {input_} in state {old_state}") from err
        previous_state = self.state
        self.state = target_state
        if func is not None:
            try:
                return func(self, previous_state)
            except ProtocolError:
                self.state = StreamState.CLOSED
                raise
            except AssertionError as err:
                self.state = StreamState.CLOSED
                raise ProtocolError(err) from err
        return []
