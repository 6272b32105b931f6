/*
 * regs.S: register-state target for faas-snapshot's tests.
 *
 * Build: gcc -static -nostdlib -o regs regs.S
 *
 * Loads every register it can with a distinct pattern, stops itself with raw
 * getpid + kill(pid, SIGSTOP), and on continue saves every register to memory
 * (before any instruction that could change one) and compares it with its
 * pattern. Prints one line per check on stdout with a single raw write:
 *
 *   OK gpr        rbx rbp rdx r8 r9 r10 r12 r13 r14 r15, rdi = pid,
 *                 rsi = SIGSTOP, rsp unchanged
 *   OK eflags     DF (set with `std` before the syscall) still set
 *   OK stack      two known quadwords at the top of the stack
 *   OK fpu        MXCSR, x87 control word and x87 st(0)
 *   OK fsgs_base  FS and GS base set with arch_prctl
 *   OK ymm        ymm0-15 (256 bits each); SKIP when the CPU/OS lacks AVX
 *   OK zmm        upper 256 bits of zmm0-15, zmm16-31, k0-k7 (64 bits with
 *                 AVX512BW, else 16); SKIP when the CPU/OS lacks AVX-512F
 *
 * A failing check prints `FAIL <check>: <register>` for each bad register.
 * rax, rcx and r11 are clobbered by `syscall` and are not checked.
 * Exits (exit_group) 0 when every check passed, 1 otherwise.
 * Closes every inherited fd above 2 (close_range) before stopping, so it
 * holds only fds 0, 1, 2, and is single-threaded.
 */

	.set SYS_write, 1
	.set SYS_getpid, 39
	.set SYS_kill, 62
	.set SYS_arch_prctl, 158
	.set SYS_exit_group, 231
	.set SYS_close_range, 436
	.set SIGSTOP, 19
	.set ARCH_SET_GS, 0x1001
	.set ARCH_SET_FS, 0x1002
	.set ARCH_GET_FS, 0x1003
	.set ARCH_GET_GS, 0x1004
	.set MXCSR_VALUE, 0xff80	/* all exceptions masked, round toward zero, FTZ */
	.set FCW_VALUE, 0x0f7f		/* all exceptions masked, extended precision, round toward zero */
	.set EFLAGS_DF, 0x400
	.set NGPR, 10

/* A string and its length: label, label_len. */
.macro STR label, text
\label:	.ascii "\text"
	.set \label\()_len, . - \label
.endm

/* Append a STR to the output buffer. Clobbers rax, rcx, rdx, rsi, rdi. */
.macro PUT label
	lea \label(%rip), %rsi
	mov $\label\()_len, %edx
	call put
.endm

	.section .rodata
	.balign 8
gpr_expected:
	.quad 0x0123456789abcdef	/* rbx */
	.quad 0xfedcba9876543210	/* rbp */
	.quad 0x1122334455667788	/* rdx */
	.quad 0x8877665544332211	/* r8 */
	.quad 0x0f1e2d3c4b5a6978	/* r9 */
	.quad 0x7869a5b4c3d2e1f0	/* r10 */
	.quad 0xdeadbeefcafebabe	/* r12 */
	.quad 0xbadc0ffee0ddf00d	/* r13 */
	.quad 0x5a5a5a5aa5a5a5a5	/* r14 */
	.quad 0x0102040810204080	/* r15 */
gpr_names:	/* 4 bytes each, NUL-padded */
	.ascii "rbx\0rbp\0rdx\0r8\0\0r9\0\0r10\0r12\0r13\0r14\0r15\0"
stack_canary0:	.quad 0x4b43415453594e41
stack_canary1:	.quad 0x1f2e3d4c5b6a7988
st0_value:	.quad 0x400921fb54442d18	/* pi as a double */
mxcsr_init:	.long MXCSR_VALUE
fcw_init:	.word FCW_VALUE

	STR s_ok_gpr, "OK gpr\n"
	STR s_fail_gpr, "FAIL gpr: "
	STR s_rdi, "rdi != pid"
	STR s_rsi, "rsi != SIGSTOP"
	STR s_rsp, "rsp moved"
	STR s_ok_eflags, "OK eflags\n"
	STR s_fail_eflags, "FAIL eflags: direction flag cleared\n"
	STR s_ok_stack, "OK stack\n"
	STR s_fail_stack, "FAIL stack: canary on the stack changed\n"
	STR s_ok_fpu, "OK fpu\n"
	STR s_fail_fpu, "FAIL fpu: "
	STR s_mxcsr, "mxcsr\n"
	STR s_fcw, "x87 control word\n"
	STR s_st0, "x87 st0\n"
	STR s_ok_fsgs, "OK fsgs_base\n"
	STR s_fail_fsgs, "FAIL fsgs_base: "
	STR s_fs, "fs base\n"
	STR s_gs, "gs base\n"
	STR s_ok_ymm, "OK ymm\n"
	STR s_skip_ymm, "SKIP ymm: CPU or OS lacks AVX\n"
	STR s_fail_ymm, "FAIL ymm: ymm"
	STR s_ok_zmm, "OK zmm\n"
	STR s_skip_zmm, "SKIP zmm: CPU or OS lacks AVX-512F\n"
	STR s_fail_zmm, "FAIL zmm: zmm"
	STR s_fail_k, "FAIL zmm: k"
	STR s_upper, " upper half\n"
	STR s_nl, "\n"

	.bss
	.balign 64
expected_vec:	.skip 32*64	/* register n at n*64 */
saved_vec:	.skip 32*64
expected_k:	.skip 8*8
saved_k:	.skip 8*8
saved_gpr:	.skip NGPR*8	/* same order as gpr_expected */
saved_rdi:	.skip 8
saved_rsi:	.skip 8
saved_rsp:	.skip 8
saved_flags:	.skip 8
saved_st0:	.skip 8
saved_fs:	.skip 8
saved_gs:	.skip 8
expected_rsp:	.skip 8
pid:		.skip 8
saved_mxcsr:	.skip 4
saved_fcw:	.skip 4
have_avx:	.skip 1
have_avx512:	.skip 1
have_bw:	.skip 1
failed_any:	.skip 1
section_failed:	.skip 1
	.balign 64
fs_area:	.skip 64
gs_area:	.skip 64
outpos:		.skip 8
outbuf:		.skip 4096

	.text
	.globl _start
_start:
	/* --- CPU features ------------------------------------------------ */
	mov $1, %eax
	cpuid
	mov %ecx, %esi
	and $(3 << 27), %esi		/* OSXSAVE | AVX */
	cmp $(3 << 27), %esi
	jne features_done
	xor %ecx, %ecx
	xgetbv
	mov %eax, %r12d			/* XCR0 low */
	mov %r12d, %esi
	and $0x6, %esi			/* SSE | AVX state */
	cmp $0x6, %esi
	jne features_done
	movb $1, have_avx(%rip)
	xor %eax, %eax
	cpuid
	cmp $7, %eax
	jb features_done
	mov $7, %eax
	xor %ecx, %ecx
	cpuid
	bt $16, %ebx			/* AVX512F */
	jnc features_done
	mov %r12d, %esi
	and $0xe6, %esi			/* + opmask, ZMM_Hi256, Hi16_ZMM */
	cmp $0xe6, %esi
	jne features_done
	movb $1, have_avx512(%rip)
	bt $30, %ebx			/* AVX512BW: 64-bit opmask moves */
	jnc features_done
	movb $1, have_bw(%rip)
features_done:

	/* --- patterns: a 64-bit LCG, mixed ------------------------------ */
	movabs $0x9e3779b97f4a7c15, %rax
	movabs $6364136223846793005, %r8
	movabs $1442695040888963407, %r9
	lea expected_vec(%rip), %rdi
	mov $(32 * 8), %ecx
1:	imul %r8, %rax
	add %r9, %rax
	mov %rax, %rdx
	shr $29, %rdx
	xor %rax, %rdx
	mov %rdx, (%rdi)
	add $8, %rdi
	dec %ecx
	jnz 1b
	lea expected_k(%rip), %rdi
	mov $8, %ecx
1:	imul %r8, %rax
	add %r9, %rax
	mov %rax, %rdx
	shr $29, %rdx
	xor %rax, %rdx
	cmpb $0, have_bw(%rip)
	jne 2f
	and $0xffff, %edx		/* kmovw only: 16-bit opmasks */
2:	mov %rdx, (%rdi)
	add $8, %rdi
	dec %ecx
	jnz 1b

	/* --- FS/GS base -------------------------------------------------- */
	mov $SYS_arch_prctl, %eax
	mov $ARCH_SET_FS, %edi
	lea fs_area(%rip), %rsi
	syscall
	mov $SYS_arch_prctl, %eax
	mov $ARCH_SET_GS, %edi
	lea gs_area(%rip), %rsi
	syscall

	/* --- only fds 0-2 at the stop ------------------------------------ */
	mov $SYS_close_range, %eax
	mov $3, %edi
	mov $-1, %esi			/* ~0U */
	xor %edx, %edx
	syscall

	/* --- FPU state --------------------------------------------------- */
	ldmxcsr mxcsr_init(%rip)
	fldcw fcw_init(%rip)
	fldl st0_value(%rip)

	/* --- stack ------------------------------------------------------- */
	pushq stack_canary1(%rip)
	pushq stack_canary0(%rip)

	/* --- vector registers -------------------------------------------- */
	cmpb $0, have_avx512(%rip)
	je load_ymm
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	vmovdqu64 expected_vec+\n*64(%rip), %zmm\n
	.endr
	cmpb $0, have_bw(%rip)
	je load_kw
	.irp n, 0,1,2,3,4,5,6,7
	kmovq expected_k+\n*8(%rip), %k\n
	.endr
	jmp vec_loaded
load_kw:
	.irp n, 0,1,2,3,4,5,6,7
	kmovw expected_k+\n*8(%rip), %k\n
	.endr
	jmp vec_loaded
load_ymm:
	cmpb $0, have_avx(%rip)
	je vec_loaded
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	vmovdqu expected_vec+\n*64(%rip), %ymm\n
	.endr
vec_loaded:

	/* --- getpid, general registers, kill(pid, SIGSTOP) --------------- */
	mov $SYS_getpid, %eax
	syscall
	mov %rax, pid(%rip)
	mov %rax, %rdi
	mov $SIGSTOP, %esi
	mov gpr_expected+0(%rip), %rbx
	mov gpr_expected+8(%rip), %rbp
	mov gpr_expected+16(%rip), %rdx
	mov gpr_expected+24(%rip), %r8
	mov gpr_expected+32(%rip), %r9
	mov gpr_expected+40(%rip), %r10
	mov gpr_expected+48(%rip), %r12
	mov gpr_expected+56(%rip), %r13
	mov gpr_expected+64(%rip), %r14
	mov gpr_expected+72(%rip), %r15
	mov %rsp, expected_rsp(%rip)
	mov $SYS_kill, %eax
	std
	syscall

	/*
	 * Continued (or restored). Save everything before touching it: movs
	 * to memory change no register and no flag; pushfq only writes below
	 * rsp, after rsp was saved.
	 */
	mov %rsp, saved_rsp(%rip)
	pushfq
	popq saved_flags(%rip)
	cld
	mov %rbx, saved_gpr+0(%rip)
	mov %rbp, saved_gpr+8(%rip)
	mov %rdx, saved_gpr+16(%rip)
	mov %r8, saved_gpr+24(%rip)
	mov %r9, saved_gpr+32(%rip)
	mov %r10, saved_gpr+40(%rip)
	mov %r12, saved_gpr+48(%rip)
	mov %r13, saved_gpr+56(%rip)
	mov %r14, saved_gpr+64(%rip)
	mov %r15, saved_gpr+72(%rip)
	mov %rdi, saved_rdi(%rip)
	mov %rsi, saved_rsi(%rip)
	stmxcsr saved_mxcsr(%rip)
	fnstcw saved_fcw(%rip)
	fstpl saved_st0(%rip)
	cmpb $0, have_avx512(%rip)
	je save_ymm
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	vmovdqu64 %zmm\n, saved_vec+\n*64(%rip)
	.endr
	cmpb $0, have_bw(%rip)
	je save_kw
	.irp n, 0,1,2,3,4,5,6,7
	kmovq %k\n, saved_k+\n*8(%rip)
	.endr
	jmp vec_saved
save_kw:
	.irp n, 0,1,2,3,4,5,6,7
	kmovw %k\n, saved_k+\n*8(%rip)
	.endr
	jmp vec_saved
save_ymm:
	cmpb $0, have_avx(%rip)
	je vec_saved
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	vmovdqu %ymm\n, saved_vec+\n*64(%rip)
	.endr
vec_saved:
	vzeroupper
	mov $SYS_arch_prctl, %eax
	mov $ARCH_GET_FS, %edi
	lea saved_fs(%rip), %rsi
	syscall
	mov $SYS_arch_prctl, %eax
	mov $ARCH_GET_GS, %edi
	lea saved_gs(%rip), %rsi
	syscall

	/* --- gpr --------------------------------------------------------- */
	movb $0, section_failed(%rip)
	xor %r12d, %r12d			/* register index */
gpr_loop:
	lea saved_gpr(%rip), %rax
	mov (%rax,%r12,8), %rax
	lea gpr_expected(%rip), %rcx
	cmp (%rcx,%r12,8), %rax
	je 2f
	PUT s_fail_gpr
	lea gpr_names(%rip), %rsi
	lea (%rsi,%r12,4), %rsi
	call put_cstr4
	PUT s_nl
	call mark_failed
2:	inc %r12d
	cmp $NGPR, %r12d
	jb gpr_loop
	mov saved_rdi(%rip), %rax
	cmp pid(%rip), %rax
	je 2f
	PUT s_fail_gpr
	PUT s_rdi
	PUT s_nl
	call mark_failed
2:	cmpq $SIGSTOP, saved_rsi(%rip)
	je 2f
	PUT s_fail_gpr
	PUT s_rsi
	PUT s_nl
	call mark_failed
2:	mov saved_rsp(%rip), %rax
	cmp expected_rsp(%rip), %rax
	je 2f
	PUT s_fail_gpr
	PUT s_rsp
	PUT s_nl
	call mark_failed
2:	cmpb $0, section_failed(%rip)
	jne 2f
	PUT s_ok_gpr
2:

	/* --- eflags ------------------------------------------------------ */
	testq $EFLAGS_DF, saved_flags(%rip)
	jz 2f
	PUT s_ok_eflags
	jmp 3f
2:	PUT s_fail_eflags
	call mark_failed
3:

	/* --- stack ------------------------------------------------------- */
	mov expected_rsp(%rip), %rdi
	mov (%rdi), %rax
	cmp stack_canary0(%rip), %rax
	jne 2f
	mov 8(%rdi), %rax
	cmp stack_canary1(%rip), %rax
	jne 2f
	PUT s_ok_stack
	jmp 3f
2:	PUT s_fail_stack
	call mark_failed
3:

	/* --- fpu --------------------------------------------------------- */
	movb $0, section_failed(%rip)
	cmpl $MXCSR_VALUE, saved_mxcsr(%rip)
	je 2f
	PUT s_fail_fpu
	PUT s_mxcsr
	call mark_failed
2:	movzwl saved_fcw(%rip), %eax
	cmp $FCW_VALUE, %eax
	je 2f
	PUT s_fail_fpu
	PUT s_fcw
	call mark_failed
2:	mov saved_st0(%rip), %rax
	cmp st0_value(%rip), %rax
	je 2f
	PUT s_fail_fpu
	PUT s_st0
	call mark_failed
2:	cmpb $0, section_failed(%rip)
	jne 2f
	PUT s_ok_fpu
2:

	/* --- fs/gs base -------------------------------------------------- */
	movb $0, section_failed(%rip)
	lea fs_area(%rip), %rax
	cmp saved_fs(%rip), %rax
	je 2f
	PUT s_fail_fsgs
	PUT s_fs
	call mark_failed
2:	lea gs_area(%rip), %rax
	cmp saved_gs(%rip), %rax
	je 2f
	PUT s_fail_fsgs
	PUT s_gs
	call mark_failed
2:	cmpb $0, section_failed(%rip)
	jne 2f
	PUT s_ok_fsgs
2:

	/* --- ymm0-15 ----------------------------------------------------- */
	cmpb $0, have_avx(%rip)
	jne 1f
	PUT s_skip_ymm
	jmp ymm_done
1:	movb $0, section_failed(%rip)
	xor %r12d, %r12d
ymm_loop:
	mov %r12, %rax
	shl $6, %rax
	lea expected_vec(%rip), %rsi
	add %rax, %rsi
	lea saved_vec(%rip), %rdi
	add %rax, %rdi
	mov $32, %ecx
	call memdiff
	test %eax, %eax
	jz 2f
	PUT s_fail_ymm
	mov %r12d, %eax
	call put_dec2
	PUT s_nl
	call mark_failed
2:	inc %r12d
	cmp $16, %r12d
	jb ymm_loop
	cmpb $0, section_failed(%rip)
	jne ymm_done
	PUT s_ok_ymm
ymm_done:

	/* --- zmm upper halves, zmm16-31, k0-7 ----------------------------- */
	cmpb $0, have_avx512(%rip)
	jne 1f
	PUT s_skip_zmm
	jmp zmm_done
1:	movb $0, section_failed(%rip)
	xor %r12d, %r12d
zmm_loop:
	mov %r12, %rax
	shl $6, %rax
	lea expected_vec(%rip), %rsi
	add %rax, %rsi
	lea saved_vec(%rip), %rdi
	add %rax, %rdi
	mov $64, %ecx
	cmp $16, %r12d
	jae 3f
	add $32, %rsi			/* zmm0-15: only the upper 256 bits */
	add $32, %rdi
	mov $32, %ecx
3:	call memdiff
	test %eax, %eax
	jz 2f
	PUT s_fail_zmm
	mov %r12d, %eax
	call put_dec2
	cmp $16, %r12d
	jae 4f
	PUT s_upper
	jmp 5f
4:	PUT s_nl
5:	call mark_failed
2:	inc %r12d
	cmp $32, %r12d
	jb zmm_loop
	xor %r12d, %r12d
k_loop:
	lea expected_k(%rip), %rax
	mov (%rax,%r12,8), %rax
	lea saved_k(%rip), %rcx
	cmp (%rcx,%r12,8), %rax
	je 2f
	PUT s_fail_k
	mov %r12d, %eax
	call put_dec2
	PUT s_nl
	call mark_failed
2:	inc %r12d
	cmp $8, %r12d
	jb k_loop
	cmpb $0, section_failed(%rip)
	jne zmm_done
	PUT s_ok_zmm
zmm_done:

	/* --- write and exit ---------------------------------------------- */
	mov $SYS_write, %eax
	mov $1, %edi
	lea outbuf(%rip), %rsi
	mov outpos(%rip), %rdx
	syscall
	movzbl failed_any(%rip), %edi
	mov $SYS_exit_group, %eax
	syscall
	hlt

/* put: append rdx bytes at rsi to outbuf. Clobbers rax, rcx, rdx, rsi, rdi. */
put:
	lea outbuf(%rip), %rdi
	mov outpos(%rip), %rcx
	add %rcx, %rdi
	add %rdx, %rcx
	cmp $4096, %rcx
	ja 2f				/* drop output that would overflow */
	mov %rcx, outpos(%rip)
1:	test %rdx, %rdx
	jz 2f
	movb (%rsi), %al
	movb %al, (%rdi)
	inc %rsi
	inc %rdi
	dec %rdx
	jmp 1b
2:	ret

/* put_cstr4: append the NUL-padded 4-byte name at rsi. */
put_cstr4:
	xor %edx, %edx
1:	cmpb $0, (%rsi,%rdx)
	je 2f
	inc %edx
	cmp $4, %edx
	jb 1b
2:	jmp put

/* put_dec2: append eax (0-99) in decimal. */
put_dec2:
	sub $8, %rsp
	mov $10, %ecx
	xor %edx, %edx
	div %ecx			/* eax = tens, edx = ones */
	add $'0', %edx
	mov %dl, 1(%rsp)
	test %eax, %eax
	jz 1f
	add $'0', %eax
	mov %al, (%rsp)
	mov %rsp, %rsi
	mov $2, %edx
	jmp 2f
1:	lea 1(%rsp), %rsi
	mov $1, %edx
2:	call put
	add $8, %rsp
	ret

/* memdiff: eax = 0 when rcx bytes at rsi equal those at rdi, else 1. */
memdiff:
	xor %eax, %eax
1:	test %rcx, %rcx
	jz 2f
	movb (%rsi), %dl
	cmpb %dl, (%rdi)
	jne 3f
	inc %rsi
	inc %rdi
	dec %rcx
	jmp 1b
3:	mov $1, %eax
2:	ret

mark_failed:
	movb $1, section_failed(%rip)
	movb $1, failed_any(%rip)
	ret

	.section .note.GNU-stack, "", @progbits
