// Typed errors of the client: every error a call returns is an *Error
// whose Code is one of the server's canonical codes (docs/api.md,
// "Errors"), or one the client gives to what happened on its side (the
// server could not be reached: Unavailable; the context ended: Cancelled
// or DeadlineExceeded).

package concurrency

import (
	"context"
	"errors"
	"fmt"
)

// Code is a canonical error code, as the server spells it.
type Code string

// The codes a call can fail with.
const (
	CodeInvalidArgument    Code = "INVALID_ARGUMENT"
	CodeUnauthenticated    Code = "UNAUTHENTICATED"
	CodePermissionDenied   Code = "PERMISSION_DENIED"
	CodeNotFound           Code = "NOT_FOUND"
	CodeFailedPrecondition Code = "FAILED_PRECONDITION"
	CodeLeaseLost          Code = "LEASE_LOST"
	CodeRunRemoved         Code = "RUN_REMOVED"
	CodeResourceExhausted  Code = "RESOURCE_EXHAUSTED"
	CodeUnavailable        Code = "UNAVAILABLE"
	CodeDeadlineExceeded   Code = "DEADLINE_EXCEEDED"
	CodeCancelled          Code = "CANCELLED"
	CodeInternal           Code = "INTERNAL"
	// CodeCancelRequested is the client's own, never the server's: what
	// KeepAlive reports when a newer run of the lease's group asks its run
	// to stop (SubmitOptions.CancelRunning).
	CodeCancelRequested Code = "CANCEL_REQUESTED"
)

// Error is what every call of the client fails with.
type Error struct {
	Code Code
	// Message says what is wrong, as the server or the client wrote it.
	Message string
	// Op is the call that failed ("AcquireSlot", "RenewLease", ...).
	Op string
	// HTTPStatus is the server's answer, or 0 when none came.
	HTTPStatus int
	// Reason is why a RUN_REMOVED run left its queue ("cleared").
	Reason string
	// Err is the cause on the client's side (a network error, the
	// context's error), if any.
	Err error
}

func (e *Error) Error() string {
	s := "pac-concurrency"
	if e.Op != "" {
		s += ": " + e.Op
	}
	s += ": " + string(e.Code)
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap gives the cause, so errors.Is(err, context.DeadlineExceeded)
// holds for a call whose context ran out.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrLeaseLost) (and the other Err values) match
// any error of that code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Op == "" && t.Message == "" && t.Code == e.Code
}

// Values to compare with errors.Is.
var (
	ErrInvalidArgument    = &Error{Code: CodeInvalidArgument}
	ErrUnauthenticated    = &Error{Code: CodeUnauthenticated}
	ErrPermissionDenied   = &Error{Code: CodePermissionDenied}
	ErrNotFound           = &Error{Code: CodeNotFound}
	ErrFailedPrecondition = &Error{Code: CodeFailedPrecondition}
	// ErrLeaseLost: the lease expired or was released; its holder no
	// longer has a slot and should stop.
	ErrLeaseLost = &Error{Code: CodeLeaseLost}
	// ErrRunRemoved: the run was removed from its queue (Error.Reason says
	// why, as "cleared"); it is not admitted when submitted again.
	ErrRunRemoved        = &Error{Code: CodeRunRemoved}
	ErrResourceExhausted = &Error{Code: CodeResourceExhausted}
	// ErrUnavailable: the server or its backend could not be reached; the
	// call may be tried again.
	ErrUnavailable      = &Error{Code: CodeUnavailable}
	ErrDeadlineExceeded = &Error{Code: CodeDeadlineExceeded}
	ErrCancelled        = &Error{Code: CodeCancelled}
	ErrInternal         = &Error{Code: CodeInternal}
	// ErrCancelRequested: a newer run of the lease's group asked its run
	// to stop (KeepAlive). The slot is still held: stop the run, then
	// release.
	ErrCancelRequested = &Error{Code: CodeCancelRequested}
)

// CodeOf returns the code of err: its *Error's, Cancelled or
// DeadlineExceeded for a context's error, "" for nil, else Internal.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		return CodeCancelled
	}
	return CodeInternal
}

func contextError(op string, err error) *Error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Code: CodeDeadlineExceeded, Op: op, Err: err,
			Message: "the context's deadline passed"}
	}
	return &Error{Code: CodeCancelled, Op: op, Err: err,
		Message: "the context was cancelled"}
}

func invalidArgument(op, format string, args ...any) *Error {
	return &Error{Code: CodeInvalidArgument, Op: op,
		Message: fmt.Sprintf(format, args...)}
}

// retryable: the call can be sent again (every route of the API is
// idempotent; see docs/api.md).
func retryable(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Code == CodeUnavailable ||
		(e.Code == CodeResourceExhausted && e.HTTPStatus == 503)
}
