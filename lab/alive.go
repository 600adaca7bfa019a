//go:build linux

package lab

// Alive says whether p still runs: the same PID, start time and
// executable as recorded (a reused PID is not p). A program that brings
// labs up in directories of its own uses it on State.Owner to find labs
// whose owner died and remove them with DownDir.
func (p Proc) Alive() bool { return p.alive() }
